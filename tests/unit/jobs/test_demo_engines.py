"""The real demo's engine choice (:mod:`edge_moe.jobs.demo_engines`): the rule on recorded
numbers, and the fleet file the demo writes and deploys. No model, no runner."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edge_moe.config import load_fleet
from edge_moe.errors import ConfigError, SelectionError
from edge_moe.jobs.demo_engines import (
    Candidate,
    Measured,
    choose_engine,
    chosen_fleet_doc,
    print_choices,
    write_chosen_fleet,
)
from edge_moe.paths import CONFIGS
from exporters.gguf_requant import gguf_precision

REAL = CONFIGS / "fleet.demo.real.yaml"


def cand(engine: str, agreement: float, ms: float, expert: str = "x", precision: str = "fp32") -> Measured:
    label = f"{engine} {precision}" if engine == "onnxruntime" else "llama.cpp Q4_K_M"
    art = f"{expert}/{precision}" if engine == "onnxruntime" else f"/cache/{expert}.gguf"
    return Measured(Candidate(expert, engine, art, Path(art), precision if engine == "onnxruntime" else "int4",
                              label, "abc"), agreement, ms)


# ------------------------------------------------------ recorded numbers (benchmarks/results/engine_bench.md)


def test_gemma_the_faster_engine_that_agrees_enough() -> None:
    onnx, gguf = cand("onnxruntime", 1.0, 558.0), cand("llama.cpp", 0.96, 219.0)
    best, why = choose_engine([onnx, gguf])
    assert best is gguf
    assert why == "fastest with agreement >= 0.95: 219 ms vs 558 ms for onnxruntime fp32"


def test_smollm2_onnx_stays_when_it_is_faster() -> None:
    onnx, gguf = cand("onnxruntime", 1.0, 142.0), cand("llama.cpp", 1.0, 305.0)
    best, why = choose_engine([onnx, gguf])
    assert best is onnx and "142 ms vs 305 ms for llama.cpp Q4_K_M" in why


def test_qwen_int4_onnx_agrees_too_little() -> None:
    onnx, gguf = cand("onnxruntime", 0.87, 2091.0, precision="int4"), cand("llama.cpp", 0.98, 1339.0)
    best, why = choose_engine([onnx, gguf])
    assert best is gguf
    assert why == "the only one with agreement >= 0.95 (0.98)"


def test_a_faster_candidate_below_the_bar_is_named() -> None:
    onnx, gguf = cand("onnxruntime", 0.90, 300.0), cand("llama.cpp", 0.97, 900.0)
    best, why = choose_engine([onnx, gguf])
    assert best is gguf
    assert why.endswith("; onnxruntime fp32 is faster (300 ms) but agrees only 0.90")


def test_exactly_the_bar_qualifies() -> None:
    onnx, gguf = cand("onnxruntime", 1.0, 500.0), cand("llama.cpp", 57 / 60, 200.0)
    assert choose_engine([onnx, gguf])[0] is gguf
    assert choose_engine([onnx, cand("llama.cpp", 56 / 60, 200.0)])[0] is onnx


# ------------------------------------------------------ ties


def test_equal_ms_goes_to_the_more_faithful() -> None:
    onnx, gguf = cand("onnxruntime", 0.96, 400.0), cand("llama.cpp", 0.99, 400.0)
    best, why = choose_engine([onnx, gguf])
    assert best is gguf and why == "as fast as onnxruntime fp32 (400 ms) and more faithful (0.99 vs 0.96)"


def test_a_full_tie_keeps_the_fleet_files_engine() -> None:
    onnx, gguf = cand("onnxruntime", 1.0, 400.0), cand("llama.cpp", 1.0, 400.0)
    best, why = choose_engine([onnx, gguf])
    assert best is onnx and why.endswith("listed first (the fleet file's engine)")
    assert choose_engine([gguf, onnx])[0] is gguf  # the order given decides, nothing else


# ------------------------------------------------------ none qualifies, one candidate, bad input


def test_none_qualifies_the_most_faithful() -> None:
    onnx, gguf = cand("onnxruntime", 0.87, 2091.0), cand("llama.cpp", 0.92, 3000.0)
    best, why = choose_engine([onnx, gguf])
    assert best is gguf
    assert why == "none reaches agreement 0.95: the most faithful (0.92 vs onnxruntime fp32 0.87)"


def test_none_qualifies_equal_agreement_goes_to_the_faster() -> None:
    onnx, gguf = cand("onnxruntime", 0.90, 800.0), cand("llama.cpp", 0.90, 700.0)
    assert choose_engine([onnx, gguf])[0] is gguf
    same = cand("llama.cpp", 0.90, 800.0)
    assert choose_engine([onnx, same])[0] is onnx  # and then to the one listed first


def test_one_candidate_without_llama_cpp() -> None:
    onnx = cand("onnxruntime", 0.87, 2091.0)
    assert choose_engine([onnx]) == (onnx, "none reaches agreement 0.95: the most faithful (0.87)")
    ok = cand("onnxruntime", 1.0, 142.0)
    assert choose_engine([ok]) == (ok, "the only candidate (agreement 1.00 >= 0.95)")


def test_no_candidates_or_nan_is_a_selection_error() -> None:
    with pytest.raises(SelectionError, match="no candidates"):
        choose_engine([])
    with pytest.raises(SelectionError, match=r"\['llama.cpp Q4_K_M'\] have a NaN"):
        choose_engine([cand("onnxruntime", 1.0, 1.0), cand("llama.cpp", float("nan"), 1.0)])


@pytest.mark.parametrize(("name", "want"), [
    ("gemma-3-270m-q4_k_m.gguf", ("int4", "Q4_K_M")),
    ("SmolLM2-135M-Instruct.Q4_1.gguf", ("int4", "Q4_1")),
    ("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", ("int4", "Q4_K_M")),
    ("model-q8_0.gguf", ("int8", "Q8_0")),
    ("model-f16.gguf", ("fp16", "F16")),
    ("model.gguf", ("int4", "?")),
])
def test_gguf_precision_from_the_file_name(name: str, want: tuple[str, str]) -> None:
    assert gguf_precision(Path(name)) == want


# ------------------------------------------------------ the fleet the demo deploys


def _choices(tmp_path: Path) -> dict[str, Candidate]:
    fleet = load_fleet(REAL)
    gguf = tmp_path / "gemma-3-270m-q4_k_m.gguf"
    out = {}
    for e in fleet.experts:
        if e.name == "gemma3-270m":
            out[e.name] = Candidate(e.name, "llama.cpp", str(gguf), gguf, "int4", "llama.cpp Q4_K_M", "a5fd3b62230a")
        else:
            out[e.name] = Candidate(e.name, e.runner, e.artifact, Path(e.artifact), e.precision,
                                    f"{e.runner} {e.precision}", "0")
    return out


def test_the_chosen_fleet_keeps_everything_but_the_engines(tmp_path: Path) -> None:
    committed = load_fleet(REAL)
    path = write_chosen_fleet(REAL, _choices(tmp_path), tmp_path)
    assert path == tmp_path / "fleet.chosen.yaml"
    chosen = load_fleet(path)
    assert (chosen.name, chosen.nodes, chosen.device_classes, chosen.categories, chosen.coordinator) == (
        committed.name, committed.nodes, committed.device_classes, committed.categories, committed.coordinator)
    assert [e.name for e in chosen.experts] == [e.name for e in committed.experts]
    assert [e.node for e in chosen.experts] == [e.node for e in committed.experts]
    by_name = {e.name: e for e in chosen.experts}
    gemma = by_name["gemma3-270m"]
    assert (gemma.runner, gemma.artifact, gemma.precision) == ("llama.cpp", str(tmp_path / "gemma-3-270m-q4_k_m.gguf"),
                                                               "int4")
    for e in committed.experts:  # the others as the fleet file has them
        if e.name != "gemma3-270m":
            assert by_name[e.name] == e
    assert path.read_text().startswith("# Written by `edge-moe demo`")


def test_the_chosen_fleet_needs_one_choice_per_expert(tmp_path: Path) -> None:
    doc = yaml.safe_load(REAL.read_text())
    choices = _choices(tmp_path)
    choices.pop("gemma3-270m")
    with pytest.raises(ConfigError, match="the chosen engines are for experts"):
        chosen_fleet_doc(doc, choices)
    assert doc == yaml.safe_load(REAL.read_text())  # the input document is not changed


def test_the_table_names_each_choice_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    onnx, gguf = cand("onnxruntime", 1.0, 558.0, "gemma3-270m"), cand("llama.cpp", 0.96, 219.0, "gemma3-270m")
    measured = {"gemma3-270m": [onnx, gguf]}
    print_choices(measured, {"gemma3-270m": choose_engine([onnx, gguf])}, 60)
    out = capsys.readouterr().out
    for text in ("gemma3-270m", "llama.cpp Q4_K_M: 0.96", "onnxruntime fp32: 558", "fastest with agreement",
                 "60 fixed train"):
        assert text in out, (text, out)
