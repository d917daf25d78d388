"""``--builder ortgenai``: onnxruntime-genai's model builder behind the same artifact and
runner contract as the torch exporter, checked against torch.

Tiny random Llama / Qwen2 (head size 16: GroupQueryAttention needs a multiple of 16) and
the real SmolLM2-135M-Instruct. The builder is fast (~10 s for SmolLM2); parity loads
the torch model once more.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_moe.errors import ArtifactError, ConfigError
from edge_moe.jobs.calibrate import resolve_expert
from edge_moe.runtime.manifest import METADATA_KEY, load_manifest
from edge_moe.runtime.runners import OrtRunner
from exporters.decoder_graph import load_causal_lm
from exporters.parity import check_decoder_parity, torch_continuation_scores
from exporters.source import resolve_source
from exporters.tiny import make_tiny_checkpoint

pytest.importorskip("onnxruntime_genai")

from exporters.ortgenai import export_ortgenai  # noqa: E402

PROMPT = [5, 17, 33, 8, 91, 12, 40, 7, 3]


def _torch_logits(model, ids: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"og-{request.param}")
    ckpt = make_tiny_checkpoint(request.param, root / "ckpt", head_dim=16)
    art = export_ortgenai(ckpt, root / "artifact", name=f"tiny-{request.param}")
    return request.param, ckpt, art


def test_manifest_and_graph_contract(tiny):
    import onnx

    _, _, art = tiny
    m = load_manifest(art)
    assert m.extra["builder"] == "ortgenai" and m.extra["parity"]["passed"]
    assert m.inputs[:2] == ["input_ids", "attention_mask"] and "position_ids" not in m.inputs
    assert m.outputs[0] == "logits" and len(m.outputs) == 1 + 2 * m.decoder["num_layers"]
    assert m.decoder["padding"] == "right"
    graph = onnx.load(str(art / m.model_file), load_external_data=False)
    ops = {n.op_type for n in graph.graph.node}
    assert "GroupQueryAttention" in ops  # the fused graph, not the torch exporter's
    embedded = json.loads(next(p.value for p in graph.metadata_props if p.key == METADATA_KEY))
    assert embedded["name"] == m.name and embedded["extra"]["builder"] == "ortgenai"
    # as an expert for calibrate / profile its default name says which builder made it
    assert resolve_expert(str(art)) == (f"tiny-{tiny[0]}-ortgenai", art)


def test_parity_on_random_ids_and_cache_steps(tiny):
    _, ckpt, art = tiny
    model = load_causal_lm(ckpt)
    rep = check_decoder_parity(model, art)  # seeded random ids: the tiny vocabulary's words
    assert rep.passed and rep.greedy_equal and 0 < rep.max_abs_diff < 1e-4, rep.summary()
    r = OrtRunner(art)
    full = _torch_logits(model, PROMPT)
    logits, past = r.forward(np.array([PROMPT[:4]]))
    steps = [logits[0, -1]]
    for t in PROMPT[4:]:
        logits, past = r.forward(np.array([[t]]), None, past)
        steps.append(logits[0, -1])
    assert np.abs(np.stack(steps) - full[3:]).max() < 1e-4
    assert past[0].shape[2] == len(PROMPT)


def test_continuation_scores_match_torch(tiny):
    """Options of 1, 4 and 2 tokens: GQA graphs score them one per call after the shared
    prefix, and must give torch's summed log-probs."""

    _, ckpt, art = tiny
    model = load_causal_lm(ckpt)
    r = OrtRunner(art)
    assert not r.has_position_ids
    prompt, options = "w5 w17 w33", [" w8", " w9 w10 w11", " w12 w13"]
    got = r.score_options(prompt, options, mode="continuation")
    want = torch_continuation_scores(model, r.encode, prompt, options)
    assert np.allclose(got, want, atol=1e-4), (got, want)


def test_cached_build_is_reused_and_options_change_the_key(tiny, monkeypatch):
    import exporters.ortgenai as og

    _, ckpt, art = tiny
    m = load_manifest(art)
    before = (art / "manifest.json").read_text()
    calls: list = []
    monkeypatch.setattr(og, "run_builder", lambda *a, **k: calls.append(a) or 0.0)
    assert export_ortgenai(ckpt, art, name=m.name) == art
    assert not calls and (art / "manifest.json").read_text() == before
    sha = m.source["sha256"]
    assert og._cached(art, sha, "fp32", {})
    assert not og._cached(art, sha, "fp32", {"accuracy_level": "4"})  # other options
    assert not og._cached(art, sha, "int4", {})
    assert not og._cached(art, "0" * 64, "fp32", {})  # another checkpoint
    assert og._cached(art, sha, "fp32", {}, need_parity=True)  # it passed its parity check


def test_a_build_without_parity_is_checked_when_parity_is_asked(tmp_path):
    import exporters.ortgenai as og

    ckpt = make_tiny_checkpoint("llama", tmp_path / "ckpt", head_dim=16)
    art = export_ortgenai(ckpt, tmp_path / "art", name="tiny", parity=False)
    m = load_manifest(art)
    assert "parity" not in m.extra
    assert og._cached(art, m.source["sha256"], "fp32", {})
    assert not og._cached(art, m.source["sha256"], "fp32", {}, need_parity=True)
    assert load_manifest(export_ortgenai(ckpt, art, name="tiny")).extra["parity"]["passed"]


def test_unsupported_checkpoint_fails_with_the_builder_log_and_leaves_nothing(tmp_path):
    """Gemma-3 configs of transformers 5 (rope_parameters per layer type) break
    onnxruntime-genai 0.18's builder; the error carries its log, no artifact is left."""
    ckpt = make_tiny_checkpoint("gemma3", tmp_path / "ckpt")
    out = tmp_path / "artifact"
    with pytest.raises(ArtifactError, match=r"builder failed .*builder\.log") as exc:
        export_ortgenai(ckpt, out, name="tiny-gemma3")
    assert "rope_type" in str(exc.value)
    assert not out.exists()


def test_bad_precision_and_cli_options(tmp_path):
    from typer.testing import CliRunner

    from edge_moe.cli import app

    with pytest.raises(ConfigError, match="precision 'fp16'"):
        export_ortgenai("smollm2-135m-instruct", tmp_path, precision="fp16")
    res = CliRunner().invoke(app, ["export", "x", "--builder", "ortgenai", "--builder-option", "novalue"])
    assert res.exit_code == 1 and "KEY=VALUE" in res.output
    res = CliRunner().invoke(app, ["export", "x", "--builder", "tensorflow"])
    assert res.exit_code == 1 and "'tensorflow' is not one of" in res.output
    res = CliRunner().invoke(app, ["export", "x", "--kind", "encoder", "--precision", "int8"])
    assert res.exit_code == 1 and "fp32 only" in res.output
    res = CliRunner().invoke(app, ["export", "x", "--int4-from-fp32", "--precision", "int4"])  # torch builder
    assert res.exit_code == 1 and "--int4-from-fp32 applies to --builder ortgenai" in res.output
    # the happy path prints the artifact folder
    ckpt = make_tiny_checkpoint("qwen2", tmp_path / "ckpt", head_dim=16)
    res = CliRunner().invoke(app, ["export", str(ckpt), "--builder", "ortgenai", "--out-dir",
                                   str(tmp_path / "art"), "--expert-name", "cli-tiny"])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(tmp_path / "art")
    assert load_manifest(tmp_path / "art").name == "cli-tiny"


@pytest.mark.slow
def test_smollm2_fp32_matches_torch_and_answers(tmp_path_factory):
    """The real model: parity (prefill, 8 decode steps, right-padded batch, 16 greedy
    tokens) ran inside the export; letter and continuation scores equal torch's."""
    import torch

    art = export_ortgenai("smollm2-135m-instruct")
    rep = load_manifest(art).extra["parity"]
    assert rep["passed"] and rep["greedy_equal"] and rep["max_abs_diff"] < 2e-3
    assert rep["n_positions"] >= 3 * 9 + 3  # 3 prompts x (prefill + 8 steps) + the padded batch
    r = OrtRunner(art, intra_op_threads=2)
    assert "Paris" in r.generate("What is the capital of France?", max_new_tokens=24).text
    model = load_causal_lm(resolve_source("smollm2-135m-instruct").hf_dir)
    prompt = ("The following are multiple choice questions (with answers) about astronomy.\n\n"
              "Which planet is largest?\nA. Mars\nB. Jupiter\nC. Venus\nD. Mercury\nAnswer:")
    got = r.score_options(prompt, ["Mars", "Jupiter", "Venus", "Mercury"])
    letters = [r.encode(prompt + f" {c}")[-1] for c in "ABCD"]
    lp = torch.log_softmax(torch.from_numpy(_torch_logits(model, r.encode(prompt))[-1]), -1)
    want = lp[letters].numpy() - np.logaddexp.reduce(lp[letters].numpy())
    assert np.abs(got - want).max() < 1e-3
    prompt, options = "The capital of France is", [" Paris.", " a banana.", " purple."]
    cont = r.score_options(prompt, options, mode="continuation")
    assert int(np.argmax(cont)) == 0
    assert np.abs(cont - torch_continuation_scores(model, r.encode, prompt, options)).max() < 1e-3


def test_batched_scoring_equals_one_at_a_time(tiny):
    """GroupQueryAttention graphs batch letter scoring with right padding and score
    continuations one request at a time; generation is not batched (node batching)."""
    from edge_moe.runtime.batch import ScoreRequest

    _, _, art = tiny
    runner = OrtRunner(art)
    prompts = ["Hi", "The capital of France is", "one two three four five six seven eight nine ten"]
    reqs = [ScoreRequest(p, ("A", "B", "C"), "letter") for p in prompts] + [
        ScoreRequest(p, (" yes", " no way", " 42"), "continuation") for p in prompts]
    batch = runner.score_batch(reqs)
    for r, o in zip(reqs, batch, strict=True):
        assert o.error is None
        np.testing.assert_allclose(o.value, runner.score_options(r.prompt, r.options, r.mode), atol=1e-5)
    assert runner.batches and not runner.batches_generation


def test_demo_int4_recipe_on_a_builder_artifact(tiny, tmp_path):
    """The real demo's 1.5B recipe (fp32 build -> weight-only int4, every MatMul 4-bit, int8
    activations in the kernel) keeps the builder's graph contract and its scores."""
    import onnx

    from exporters.ortgenai import export_ortgenai_int4

    arch, _, art = tiny
    if arch != "qwen2":
        pytest.skip("one architecture suffices")
    ckpt = tiny[1]
    q = export_ortgenai_int4(ckpt, tmp_path / "int4", fp32_dir=art, name="tiny-qwen2")
    assert load_manifest(q).extra["parity"]["passed"]  # top-1 agreement with the fp32 build
    m = load_manifest(q)
    assert m.precision == "int4" and m.extra["builder"] == "ortgenai" and m.decoder["padding"] == "right"
    assert m.extra["parent_sha256"] == load_manifest(art).model_sha256
    graph = onnx.load(str(q / m.model_file), load_external_data=False).graph
    attrs = [{a.name: a.i for a in n.attribute} for n in graph.node if n.op_type == "MatMulNBits"]
    assert attrs and all(a["bits"] == 4 and a["accuracy_level"] == 4 and a["block_size"] == 32 for a in attrs)
    assert not [n for n in graph.node if n.op_type == "MatMul"]  # nothing left in fp32
    fp, qq = OrtRunner(art), OrtRunner(q)
    a, _ = fp.forward(np.array([PROMPT]))
    b, _ = qq.forward(np.array([PROMPT]))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    # batched letter scoring (right padding) equals one at a time on the int4 graph too
    reqs = ["Q: 1+1?\nA. 2\nB. 3\nAnswer:", "Q: a much longer question about nothing at all?\nA. x\nB. y\nAnswer:"]
    one = [qq.score_options(p, ["a", "b"]) for p in reqs]
    from edge_moe.runtime.batch import ScoreRequest

    both = qq.score_batch([ScoreRequest(p, ("a", "b"), "letter", False) for p in reqs])
    for o, x in zip(one, both, strict=True):
        np.testing.assert_allclose(np.asarray(x.value), o, atol=1e-4)


def test_builds_run_in_a_spawned_process_quietly_and_keep_their_typed_errors(tiny, tmp_path, capfd):
    from edge_moe.jobs.demo_real import _in_subprocess
    from exporters.quantize import quantize_decoder

    arch, _, art = tiny
    if arch != "qwen2":
        pytest.skip("one architecture suffices")
    capfd.readouterr()
    q = _in_subprocess(quantize_decoder, art, "int4", tmp_path / "q", check=False)
    assert load_manifest(q).precision == "int4"
    printed = capfd.readouterr()
    assert "[INFO]" not in printed.out + printed.err  # the quantizer logs a line per MatMul otherwise
    with pytest.raises(ArtifactError, match=str(tmp_path / "none")):
        _in_subprocess(quantize_decoder, tmp_path / "none", "int4")
