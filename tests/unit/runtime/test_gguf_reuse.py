"""Prefix reuse's rule in :class:`edge_moe.runtime.gguf.GgufRunner` (``_reusable``): how many
leading prompt tokens the cache may keep. llama.cpp's one answer the rule needs (the first
position still cached, ``llama_memory_seq_pos_min``) is a double here; the real runner's reuse
against a fresh context is ``tests/integration/runtime/test_gguf.py``."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from edge_moe.runtime.gguf import GgufRunner

C = 4  # the chunk here (the runner's default is 64)


def _runner(cached: list[int], exact: int | None = None, *, n_swa: int = 0, pos_min: int = 0,
            mode: str = "exact", chunk: int = C) -> GgufRunner:
    r = GgufRunner.__new__(GgufRunner)  # no model: only the rule's inputs
    r.prefix_reuse, r._cached, r.n_swa, r.ctx, r.n_batch = mode, list(cached), n_swa, object(), chunk
    r._exact = len(cached) - len(cached) % chunk if exact is None else exact
    r._ll = SimpleNamespace(llama_get_memory=lambda ctx: "mem",
                            llama_memory_seq_pos_min=lambda mem, seq: pos_min)
    return r


@pytest.mark.parametrize(("cached", "ids", "want"), [
    (list(range(10)), [*range(9), 99, 99], 8),  # shares 9: the 2 whole chunks
    (list(range(10)), [*range(7), 99], 4),  # shares 7: 1 whole chunk
    (list(range(10)), [*range(3), 99], 0),  # shares less than a chunk
    (list(range(8)), list(range(8)), 4),  # the same prompt: its last token's chunk again
    (list(range(8)), list(range(9)), 8),  # the prompt goes on past the cache
    (list(range(10)), list(range(12)), 8),  # positions 8, 9 are not a whole chunk of a prompt
    ([], [1, 2, 3], 0),  # an empty cache
])
def test_whole_chunks_of_the_shared_prefix(cached, ids, want) -> None:
    assert _runner(cached)._reusable(ids) == want


def test_rows_a_generation_computed_are_not_reused() -> None:
    """A prompt of 6 (one whole chunk) and 6 generated tokens: the next turn, which holds all
    12, keeps only the prompt's whole chunk."""
    assert _runner(list(range(12)), exact=4)._reusable([*range(12), 50, 51]) == 4
    assert _runner(list(range(12)), exact=0)._reusable([*range(12), 50, 51]) == 0


def test_off_reuses_nothing() -> None:
    assert _runner(list(range(8)), mode="off")._reusable(list(range(12))) == 0


@pytest.mark.parametrize(("cached", "exact", "ids", "want"), [
    (list(range(10)), 8, [*range(9), 99, 99], 9),  # every shared token
    (list(range(12)), 4, [*range(12), 50], 12),  # generated rows too
    (list(range(8)), 8, list(range(8)), 7),  # the same prompt: all but its last token
    (list(range(10)), 8, [*range(3), 99], 3),  # less than a chunk
])
def test_tokens_keeps_every_shared_token(cached, exact, ids, want) -> None:
    assert _runner(cached, exact, mode="tokens")._reusable(ids) == want


def test_an_unknown_mode_is_refused(tmp_path) -> None:
    from edge_moe.errors import RunnerError

    with pytest.raises(RunnerError, match=r"prefix_reuse='all': choose one of \['exact', 'tokens', 'off'\]"):
        GgufRunner(tmp_path / "m.gguf", prefix_reuse="all")


def test_a_sliding_window_that_dropped_positions_the_rest_needs() -> None:
    cached = list(range(1, 701))
    ids = [*cached[:600], 9, 9]
    # chunk 8, window 512: tokens from position 600 attend back to 88; the cache must still hold it
    assert _runner(cached, n_swa=512, pos_min=0, chunk=8)._reusable(ids) == 600
    assert _runner(cached, n_swa=512, pos_min=88, chunk=8)._reusable(ids) == 600
    assert _runner(cached, n_swa=512, pos_min=89, chunk=8)._reusable(ids) == 0
    assert _runner(cached, n_swa=0, pos_min=650, chunk=8)._reusable(ids) == 600  # no window: not asked
