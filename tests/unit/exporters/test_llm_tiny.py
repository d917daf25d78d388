"""Tiny random Llama / Qwen2 / Gemma3: export → parity → the runner matches torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edge_moe.errors import ParityError
from edge_moe.runtime.manifest import METADATA_KEY, load_manifest
from edge_moe.runtime.runners import OrtRunner
from exporters.decoder_graph import load_causal_lm
from exporters.llm import export_decoder
from exporters.parity import check_decoder_parity, torch_continuation_scores
from exporters.tiny import ARCHS, EOS_ID, make_tiny_checkpoint

PROMPT = [5, 17, 33, 8, 91, 12, 40, 7, 3]  # longer than Gemma3's sliding window of 4


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"tiny-{request.param}")
    ckpt = make_tiny_checkpoint(request.param, root / "ckpt")
    art = export_decoder(ckpt, root / "artifact", name=f"tiny-{request.param}")
    return request.param, ckpt, art


def _torch_greedy(model, ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import DynamicCache

    cache, out, x = DynamicCache(), [], torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            tok = int(
                model(input_ids=x, past_key_values=cache, use_cache=True).logits[0, -1].argmax()
            )
            if tok == EOS_ID:
                break
            out.append(tok)
            x = torch.tensor([[tok]])
    return out


def test_manifest_and_graph_contract(tiny):
    arch, _, art = tiny
    m = load_manifest(art)
    n = m.decoder["num_layers"]
    assert (
        m.kind == "decoder"
        and m.precision == "fp32"
        and m.model_type == ("gemma3_text" if arch == "gemma3" else arch)
    )
    assert m.inputs[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert m.inputs[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert m.outputs[:2] == ["logits", "present.0.key"] and len(m.outputs) == 1 + 2 * n
    assert m.extra["parity"]["passed"] and m.extra["parity"]["greedy_equal"]
    assert m.extra["parity"]["max_abs_diff"] < 1e-4
    assert (
        m.chat_prefix == "<|im_start|>user\n"
        and m.chat_suffix == "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert m.special_tokens["eos_token_ids"] == [EOS_ID] and m.parameter_count > 0
    g = onnx.load(str(art / m.model_file))
    embedded = json.loads({p.key: p.value for p in g.metadata_props}[METADATA_KEY])
    assert embedded["name"] == m.name and embedded["inputs"] == m.inputs
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
        for i in g.graph.input
    }
    assert dims["input_ids"] == ["batch", "seq"]
    # No weight is transposed on every call (a tied output layer reads a stored W.T;
    # for tiny models the exporter's constant folding already does it).
    inits = {i.name for i in g.graph.initializer}
    assert not [n for n in g.graph.node if n.op_type == "Transpose" and n.input[0] in inits]
    assert (
        dims["past_key_values.0.key"][0] == "batch" and dims["past_key_values.0.key"][2] == "past"
    )


def test_runner_greedy_equals_torch(tiny):
    _, ckpt, art = tiny
    model = load_causal_lm(ckpt)
    runner = OrtRunner(art)
    got = runner.generate_ids(PROMPT, 16)
    assert got.token_ids == _torch_greedy(model, PROMPT, 16)
    assert got.stop_reason in ("length", "eos") and got.prefill_ms > 0


def test_prefill_past_zero_equals_decode_path(tiny):
    """The same graph serves prefill (past 0) and decode: a prompt in one pass equals
    the same prompt fed one token at a time through the KV cache."""
    _, _, art = tiny
    r = OrtRunner(art)
    full, _ = r.forward(np.array([PROMPT]))
    past = None
    steps = []
    for t in PROMPT:
        logits, past = r.forward(np.array([[t]]), None, past)
        steps.append(logits[0, -1])
    assert np.abs(np.stack(steps) - full[0]).max() < 1e-4
    assert past[0].shape[2] == len(PROMPT)


def test_continuation_scores_match_torch(tiny):

    _, ckpt, art = tiny
    model = load_causal_lm(ckpt)
    r = OrtRunner(art)
    prompt, options = "w5 w17 w33", [" w8", " w9 w10 w11", " w12 w13"]
    got = r.score_options(prompt, options, mode="continuation")
    want = torch_continuation_scores(model, r.encode, prompt, options)
    assert np.allclose(got, want, atol=1e-4)
    assert np.isclose(np.logaddexp.reduce(got), 0.0)


def test_perturbed_model_fails_parity_with_a_report(tiny):
    import torch

    _, ckpt, art = tiny
    model = load_causal_lm(ckpt)
    with torch.no_grad():
        model.lm_head.weight.add_(0.05 * torch.randn_like(model.lm_head.weight))
    with pytest.raises(ParityError) as info:
        check_decoder_parity(model, art)
    report = info.value.report
    assert not report.passed and report.max_abs_diff > 2e-3
    assert "prompt" in report.where and "max|Δlogit|" in str(info.value)
    assert not report.nan_or_inf


def test_cached_export_is_reused(tiny, monkeypatch):
    _, ckpt, art = tiny
    import exporters.llm as llm

    monkeypatch.setattr(llm, "export_onnx", lambda *a, **k: pytest.fail("re-exported"))
    assert export_decoder(ckpt, art) == art


def test_int4_variant_settings_and_cache(tiny, tmp_path):
    from exporters.quantize import Int4Options, quantize_decoder

    arch, _, art = tiny
    if arch != "gemma3":
        pytest.skip("one architecture suffices")
    q = quantize_decoder(art, "int4", tmp_path / "int4", check=False)
    info = load_manifest(q).extra["quantization"]
    assert info["method"] == "MatMulNBits" and info["block_size"] == 32
    assert info["symmetric"] is False and info["sensitive_bits"] == 8
    assert info["sensitive_matmuls"] == 2 * 3 + 1  # o_proj and down per layer, output layer
    ops = {n.op_type for n in onnx.load(str(q / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops
    bits = {
        a.i
        for n in onnx.load(str(q / "model.onnx")).graph.node
        if n.op_type == "MatMulNBits"
        for a in n.attribute
        if a.name == "bits"
    }
    assert bits == {4, 8}
    logits, _ = OrtRunner(q).forward(np.array([PROMPT]))
    assert np.isfinite(logits).all()
    # other settings are another artifact, not the cached one
    mtime = (q / "model.onnx").stat().st_mtime_ns
    assert quantize_decoder(art, "int4", q, check=False) == q
    assert (q / "model.onnx").stat().st_mtime_ns == mtime
    quantize_decoder(art, "int4", q, check=False, int4=Int4Options(sensitive_bits=32))
    assert load_manifest(q).extra["quantization"]["sensitive_bits"] == 32


def test_int4_options_are_checked():
    from edge_moe.errors import ConfigError
    from exporters.quantize import Int4Options

    with pytest.raises(ConfigError, match="sensitive_bits"):
        Int4Options(sensitive_bits=16)
    with pytest.raises(ConfigError, match="power of two"):
        Int4Options(block_size=48)


def test_pretranspose_tied_weights(tmp_path):
    """Gather(W, ids) … MatMul(h, Transpose(W)) becomes one stored W.T read by both."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from exporters.tied_weights import pretranspose_tied_weights

    rng = np.random.default_rng(0)
    w = rng.standard_normal((50, 8)).astype(np.float32)  # (vocab, hidden)
    nodes = [
        helper.make_node("Gather", ["W", "ids"], ["emb"], axis=0),
        helper.make_node("Tanh", ["emb"], ["h"]),
        helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
        helper.make_node("MatMul", ["h", "Wt"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b", "t"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", "t", 50])],
        [numpy_helper.from_array(w, "W")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    ids = rng.integers(0, 50, (2, 5))
    before = ort.InferenceSession(str(path)).run(None, {"ids": ids})[0]
    assert pretranspose_tied_weights(path, external=False) == 1
    g = onnx.load(str(path)).graph
    assert [i.name for i in g.initializer] == ["W.T"]
    assert [n.op_type for n in g.node] == ["Gather", "Transpose", "Tanh", "MatMul"]
    after = ort.InferenceSession(str(path)).run(None, {"ids": ids})[0]
    assert np.array_equal(before, after)
    assert pretranspose_tied_weights(path, external=False) == 0
