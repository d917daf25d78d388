"""Tiny random Llama / Qwen2 / Gemma3: export → parity → the runner matches torch."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edge_moe.errors import ParityError
from exporters.llm import export_decoder, load_causal_lm
from exporters.parity import check_decoder_parity
from exporters.tiny import ARCHS, EOS_ID, make_tiny_checkpoint
from nodes.manifest import METADATA_KEY, load_manifest
from nodes.runners import OrtRunner

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
    import torch

    _, ckpt, art = tiny
    model = load_causal_lm(ckpt)
    r = OrtRunner(art)
    prompt, options = "w5 w17 w33", [" w8", " w9 w10 w11", " w12 w13"]
    got = r.score_options(prompt, options, mode="continuation")
    want = []
    p_ids = r.encode(prompt)
    for o in options:
        ids = r.encode(prompt + o)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        want.append(sum(float(lp[j - 1, ids[j]]) for j in range(len(p_ids), len(ids))))
    want = np.array(want) - np.logaddexp.reduce(want)
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
