"""exporters.artifact: the manifest goes into a graph with external weights atomically,
and the precisions the exporters build are one fact."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_moe.config import PRECISIONS
from edge_moe.runtime.manifest import METADATA_KEY
from exporters import artifact
from exporters.artifact import EXPORT_PRECISIONS, set_manifest_metadata


@pytest.fixture
def graph(tmp_path):
    """model.onnx (y = x @ W) whose W lives in model.onnx.data, with two metadata entries."""
    w = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)  # 16 KB: stored externally
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    helper.set_model_props(model, {"old": "1", METADATA_KEY: "{}"})
    path = tmp_path / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    return path, w


def test_manifest_metadata_replaces_all_entries_and_keeps_external_weights(graph):
    path, w = graph
    data = (path.parent / "model.onnx.data").read_bytes()
    set_manifest_metadata(path, '{"name": "x"}')
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (path.parent / "model.onnx.data").read_bytes() == data  # weights not rewritten
    m = onnx.load(str(path))  # the external reference still resolves
    assert [(p.key, p.value) for p in m.metadata_props] == [(METADATA_KEY, '{"name": "x"}')]
    assert np.array_equal(numpy_helper.to_array(m.graph.initializer[0]), w)


def test_a_failed_metadata_write_leaves_the_graph_as_it_was(graph, monkeypatch):
    path, _ = graph
    before = path.read_bytes()

    def save(model, f, *a, **k):
        open(f, "wb").write(b"half a graph")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save", save)
    with pytest.raises(OSError, match="No space"):
        set_manifest_metadata(path, '{"name": "x"}')
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx", "model.onnx.data"]


def test_export_precisions_are_one_fact():
    from exporters.quantize import VARIANTS

    assert EXPORT_PRECISIONS[0] == "fp32"
    assert VARIANTS == EXPORT_PRECISIONS[1:] == ("int8", "int4")
    assert set(EXPORT_PRECISIONS) <= set(PRECISIONS)  # every export is a readable artifact
    assert artifact.default_artifact_dir("m", "int8").parts[-2:] == ("m", "int8")
