"""The Sampler (edge_moe.runtime.sampling) against brute force: greedy is argmax, top-k/p and
min-p restrict the support, the penalties change the logits as specified, a seed fixes the
draws, and the log-probs are the raw model's."""

from __future__ import annotations

import numpy as np
import pytest

from edge_moe.runtime.sampling import Sampler, apply_penalties, keep_mask
from edge_moe.wire import Sampling

pytestmark = pytest.mark.timeout(60)

V = 50


def _logits(seed: int, v: int = V, scale: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, scale, v).astype(np.float32)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    return z - np.log(np.sum(np.exp(z - z.max()))) - z.max()


def _draws(s: Sampling, z: np.ndarray, n: int = 2000) -> np.ndarray:
    sampler = Sampler(s)
    return np.array([sampler.pick(z, [])[0] for _ in range(n)])


def test_greedy_picks_what_argmax_picks():
    for seed in range(200):
        z = _logits(seed)
        if seed % 3 == 0:
            z[[4, 9]] = z.max() + 1  # a tie: argmax takes the first
        want = int(np.argmax(z))
        for s in (None, Sampling(), Sampling(temperature=0.0, top_k=3, repetition_penalty=1.5,
                                             presence_penalty=2.0, seed=seed)):
            assert Sampler(s, prompt_ids=[want]).pick(z, [want] * 3)[0] == want


@pytest.mark.parametrize("temperature", [0.05, 0.7, 1.0, 2.0])
def test_top_k_one_is_greedy_at_any_temperature(temperature):
    for seed in range(50):
        z = _logits(seed)
        sampler = Sampler(Sampling(temperature=temperature, top_k=1, seed=seed))
        assert [sampler.pick(z, [])[0] for _ in range(20)] == [int(np.argmax(z))] * 20


def _allowed(z: np.ndarray, s: Sampling) -> set[int]:
    """Brute force: the support after top-k, top-p and min-p, one token at a time."""
    t = np.asarray(z, np.float64) / s.temperature
    order = sorted(range(len(t)), key=lambda i: -t[i])
    keep = {i for i in order if t[i] >= t[order[s.top_k - 1]]} if s.top_k else set(order)  # ties kept
    kept = [i for i in order if i in keep]
    p = np.exp(t[kept] - t[kept].max())
    p /= p.sum()
    if s.top_p < 1:
        total, nucleus = 0.0, []
        for i, pi in zip(kept, p, strict=True):
            nucleus.append(i)
            total += pi
            if total >= s.top_p:
                break
        kept = nucleus
        p = np.exp(t[kept] - t[kept].max())
        p /= p.sum()
    if s.min_p > 0:
        kept = [i for i, pi in zip(kept, p, strict=True) if pi >= s.min_p * p.max()]
    return set(kept)


@pytest.mark.parametrize("s", [
    Sampling(temperature=1.0, top_k=5, seed=1),
    Sampling(temperature=0.8, top_p=0.6, seed=2),
    Sampling(temperature=1.3, min_p=0.2, seed=3),
    Sampling(temperature=1.0, top_k=10, top_p=0.9, min_p=0.05, seed=4),
], ids=["top_k", "top_p", "min_p", "all"])
def test_top_k_top_p_min_p_restrict_the_support(s):
    z = _logits(7, scale=1.5)
    allowed = _allowed(z, s)
    assert 1 < len(allowed) < V
    assert set(np.flatnonzero(keep_mask(np.asarray(z, np.float64) / s.temperature, s))) == allowed
    got = _draws(s, z)
    assert set(got.tolist()) <= allowed, sorted(set(got.tolist()) - allowed)
    assert len(set(got.tolist())) > 1  # it does sample
    # the most likely token comes out about as often as its renormalised probability
    t = np.asarray(z, np.float64) / s.temperature
    kept = sorted(allowed)
    p = np.exp(t[kept] - t[kept].max())
    p /= p.sum()
    top = kept[int(np.argmax(p))]
    assert abs(np.mean(got == top) - p.max()) < 0.05


def _penalised_by_hand(z: np.ndarray, s: Sampling, prompt: list[int], gen: list[int]) -> np.ndarray:
    out = np.asarray(z, np.float64).copy()
    for tok in set(prompt) | set(gen):
        out[tok] = out[tok] / s.repetition_penalty if out[tok] > 0 else out[tok] * s.repetition_penalty
    for tok in set(gen):
        out[tok] -= s.presence_penalty + s.frequency_penalty * gen.count(tok)
    return out


def test_penalties_change_the_logits_as_specified():
    rng = np.random.default_rng(0)
    for seed in range(30):
        z = _logits(seed)
        prompt = rng.integers(0, V, 6).tolist()
        gen = rng.integers(0, V, 9).tolist()
        s = Sampling(temperature=1.0, repetition_penalty=float(rng.uniform(0.5, 2.0)),
                     presence_penalty=float(rng.uniform(-2, 2)), frequency_penalty=float(rng.uniform(-2, 2)))
        got = apply_penalties(z, s, np.unique(prompt), gen)
        np.testing.assert_allclose(got, _penalised_by_hand(z, s, prompt, gen), rtol=1e-12)
        untouched = sorted(set(range(V)) - set(prompt) - set(gen))
        np.testing.assert_array_equal(got[untouched], np.asarray(z, np.float64)[untouched])


def test_the_penalties_steer_away_from_seen_tokens():
    z = np.zeros(V, np.float32)
    z[3], z[5] = 5.0, 3.5  # the favourite 3 is in the prompt
    cold = dict(temperature=0.05, seed=0)
    assert Sampler(Sampling(**cold), prompt_ids=[3]).pick(z, [])[0] == 3
    assert Sampler(Sampling(**cold, repetition_penalty=2.0), prompt_ids=[3]).pick(z, [])[0] == 5  # 5/2 < 3.5
    # presence / frequency count only the generated tokens, not the prompt
    assert Sampler(Sampling(**cold, presence_penalty=2.0), prompt_ids=[3]).pick(z, [])[0] == 3
    assert Sampler(Sampling(**cold, presence_penalty=2.0)).pick(z, [3])[0] == 5  # 5-2 < 3.5
    assert Sampler(Sampling(**cold, frequency_penalty=1.0)).pick(z, [3, 3, 3])[0] == 5  # 5-3 < 3.5


def test_the_same_seed_gives_the_same_tokens_and_another_seed_others():
    z = [_logits(i, scale=1.0) for i in range(40)]
    s = Sampling(temperature=1.0, top_p=0.95, seed=123)

    def run(sampling: Sampling) -> list[int]:
        sampler = Sampler(sampling, prompt_ids=[1, 2])
        out: list[int] = []
        for x in z:
            out.append(sampler.pick(x, out)[0])
        return out

    assert run(s) == run(s)
    assert run(s) != run(Sampling(temperature=1.0, top_p=0.95, seed=124))
    fresh = [run(Sampling(temperature=1.0, top_p=0.95)) for _ in range(3)]  # seed None: fresh each time
    assert len({tuple(f) for f in fresh}) > 1


def test_logprobs_are_the_raw_models_and_top_logprobs_the_k_largest():
    for seed in range(30):
        z = _logits(seed)
        s = Sampling(temperature=1.5, top_k=8, repetition_penalty=1.3, seed=seed, logprobs=True,
                     top_logprobs=1 + seed % 5)
        tok, lp = Sampler(s, prompt_ids=[1, 2, 3], token_text=lambda i: f"<{i}>").pick(z, [4, 4])
        assert lp is not None
        raw = _log_softmax(z)
        assert lp.token == f"<{tok}>" and lp.logprob <= 0
        assert lp.logprob == pytest.approx(raw[tok], abs=1e-9)
        k = s.top_logprobs
        best = np.argsort(-raw, kind="stable")[:k]
        assert lp.top_tokens == tuple(f"<{i}>" for i in best)
        np.testing.assert_allclose(lp.top_logprobs, raw[best], atol=1e-9)
        assert all(x <= 0 for x in lp.top_logprobs) and list(lp.top_logprobs) == sorted(lp.top_logprobs, reverse=True)
    assert Sampler(Sampling(temperature=1.0, seed=1)).pick(_logits(0), [])[1] is None  # not asked
    greedy = Sampler(Sampling(logprobs=True)).pick(_logits(0), [])
    assert greedy[0] == int(np.argmax(_logits(0))) and greedy[1] is not None and greedy[1].top_tokens == ()


def test_the_nucleus_from_a_threshold_equals_a_full_sort():
    """top_p sorts only the tokens above a threshold; on flat and peaked distributions, with
    ties, the support is the one a sort of the whole vocabulary gives."""
    rng = np.random.default_rng(5)
    for trial in range(60):
        scale = [0.3, 3.0, 12.0][trial % 3]
        z = rng.normal(0, scale, 2000)
        if trial % 4 == 0:
            z = np.round(z)  # many ties
        s = Sampling(temperature=1.0, top_p=float(rng.uniform(0.05, 0.999)), min_p=[0.0, 0.01][trial % 2],
                     top_k=[0, 40][trial % 5 == 0])
        assert set(np.flatnonzero(keep_mask(z, s))) == _allowed(z, s), (trial, s)
