"""How one sequence picks its next token: greedy, or drawn under a :class:`~edge_moe.wire.Sampling`.

A :class:`Sampler` belongs to one sequence (made from its ``Sampling`` and its prompt's
token ids) and is the only place a token is chosen, alone or in a batch
(:mod:`edge_moe.runtime.generation`), so both give the same tokens.

**Greedy** (no sampling, or ``temperature`` 0): ``argmax`` of the raw logits, exactly what
``np.argmax`` picks (the first of equal maxima); every other sampling field but ``stop``
and the log-probs is ignored, as the wire says.

**Sampled** (``temperature`` > 0): the logits ``z`` (float64) go through, in the order the
wire fixes (:class:`~edge_moe.wire.Sampling`):

1. repetition penalty ``r`` (llama.cpp / Hugging Face): for every token id seen in the
   prompt or the text so far, ``z /= r`` where ``z > 0`` and ``z *= r`` where ``z <= 0``;
2. presence / frequency penalties (OpenAI), over the generated tokens only:
   ``z -= presence · [count > 0] + frequency · count``;
3. temperature: ``z /= T``;
4. ``top_k`` (0: off): tokens below the k-th largest ``z`` dropped (ties kept);
5. ``top_p`` (nucleus, 1: off): the fewest most likely tokens whose probability sums to
   ``top_p`` or more are kept (at least one);
6. ``min_p`` (0: off): tokens whose probability is below ``min_p`` × the top one's dropped;

then one uniform draw ``u ∈ [0, 1)`` from the sequence's own
``np.random.Generator(PCG64(seed))`` picks the token by inverse CDF over the kept ones.
One draw per token, whatever the batch: the same seed, prompt and artifact give the same
tokens alone or batched. ``seed`` None takes a fresh one from ``np.random.SeedSequence()``.

**Log-probs** (``logprobs``): the chosen token's log-probability under the model's own
distribution (log-softmax of the raw logits, before any transform), and the
``top_logprobs`` most likely tokens under it.

numpy only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from edge_moe.wire import Sampling, TokenLogprob

logger = logging.getLogger(__name__)

__all__ = ["Sampler", "apply_penalties", "keep_mask", "log_softmax64", "support"]


def log_softmax64(z: np.ndarray) -> np.ndarray:
    """(V,) float64 log-softmax of ``z`` (entries of -inf stay -inf)."""
    z = np.asarray(z, np.float64)
    m = z.max()
    return z - (m + np.log(np.exp(z - m).sum()))


def apply_penalties(z: np.ndarray, s: Sampling, seen: np.ndarray, generated: Sequence[int]) -> np.ndarray:
    """Steps 1 and 2 of the module docstring on a float64 copy of ``z``.

    Args:
        z: (V,) logits.
        s: the sampling settings.
        seen: unique token ids of the prompt (the generated ones are added here).
        generated: the sequence's generated token ids so far.

    Returns:
        (V,) float64 penalised logits.
    """
    z = np.array(z, np.float64)
    gen = np.asarray(generated, np.int64)
    if s.repetition_penalty != 1.0:
        ids = np.union1d(seen, gen) if gen.size else seen
        if ids.size:
            v = z[ids]
            z[ids] = np.where(v > 0, v / s.repetition_penalty, v * s.repetition_penalty)
    if gen.size and (s.presence_penalty or s.frequency_penalty):
        ids, counts = np.unique(gen, return_counts=True)
        z[ids] -= s.presence_penalty + s.frequency_penalty * counts
    return z


def support(z: np.ndarray, s: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """Steps 4-6 of the module docstring on the tempered logits ``z``: the token ids that may
    be drawn (ascending; always at least the most likely one) and their probabilities
    under ``softmax(z)`` after ``top_k`` (not renormalised: the draw scales by their sum).

    ``top_p`` sorts only the tokens above a probability threshold whose mass already
    reaches ``top_p`` (lowered until it does): the nucleus is the same as a sort of the
    whole vocabulary gives, ties included, at a fraction of the cost (a stable sort of
    49152 logits takes milliseconds a token).
    """
    z = np.asarray(z, np.float64)
    if 0 < s.top_k < z.size:
        kth = np.partition(z, -s.top_k)[-s.top_k]
        z = np.where(z >= kth, z, -np.inf)
    p = np.exp(z - z.max())  # (V,)
    p /= p.sum()
    if s.top_p < 1.0:
        rel = 1e-3
        while True:
            cand = np.flatnonzero(p >= rel * p.max())  # the most likely tokens, ascending ids
            if rel == 0.0 or p[cand].sum() >= s.top_p:
                break
            rel = rel * 1e-3 if rel > 1e-12 else 0.0
        order = cand[np.argsort(-p[cand], kind="stable")]
        n = min(int(np.searchsorted(np.cumsum(p[order]), s.top_p)) + 1, order.size)  # sum >= top_p
        nucleus = np.zeros(p.shape, bool)
        nucleus[order[:n]] = True
        p = np.where(nucleus, p, 0.0)
    if s.min_p > 0.0:  # relative to the top token, which every step keeps
        p = np.where(p >= s.min_p * p.max(), p, 0.0)
    ids = np.flatnonzero(p > 0)
    return ids, p[ids]


def keep_mask(z: np.ndarray, s: Sampling) -> np.ndarray:
    """(V,) bool: the tokens :func:`support` keeps."""
    keep = np.zeros(np.shape(z), bool)
    keep[support(z, s)[0]] = True
    return keep


class Sampler:
    """The token picker of one sequence (see the module docstring).

    Args:
        sampling: the settings; None (or ``temperature`` 0) decodes greedily.
        prompt_ids: the prompt's token ids (the repetition penalty counts them as seen).
        token_text: a token id's text, for the log-probs (default: the id as a string).
    """

    def __init__(self, sampling: Sampling | None, prompt_ids: Sequence[int] = (),
                 token_text: Callable[[int], str] | None = None) -> None:
        self.sampling = sampling
        self.sampled = sampling is not None and sampling.sampled
        self.logprobs = sampling is not None and sampling.logprobs
        self.top_logprobs = sampling.top_logprobs if sampling is not None else 0
        self.token_text = token_text or str
        self.seen = np.unique(np.asarray(list(prompt_ids), np.int64))
        self.rng: np.random.Generator | None = None
        self.seed: int | None = None
        if self.sampled:
            assert sampling is not None
            self.seed = sampling.seed
            if self.seed is None:
                self.seed = int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]  # drawn: an int
            self.rng = np.random.Generator(np.random.PCG64(self.seed))

    def pick(self, logits: np.ndarray, generated: Sequence[int]) -> tuple[int, TokenLogprob | None]:
        """The next token from this sequence's logits.

        Args:
            logits: (V,) raw next-token logits.
            generated: the token ids generated so far (for the penalties).

        Returns:
            The token id, and its :class:`~edge_moe.wire.TokenLogprob` when log-probs
            were asked (else None).
        """
        if self.rng is None:
            tok = int(np.argmax(logits))
        else:
            tok = self._draw(logits, generated)
        return tok, (self._logprob(logits, tok) if self.logprobs else None)

    def _draw(self, logits: np.ndarray, generated: Sequence[int]) -> int:
        s = self.sampling
        assert s is not None and self.rng is not None
        z = apply_penalties(logits, s, self.seen, generated) / s.temperature  # (V,)
        ids, p = support(z, s)
        cum = np.cumsum(p)
        u = self.rng.random()  # exactly one draw per token
        j = min(int(np.searchsorted(cum, u * cum[-1], side="right")), ids.size - 1)
        return int(ids[j])

    def _logprob(self, logits: np.ndarray, tok: int) -> TokenLogprob:
        lp = log_softmax64(logits)  # (V,) the model's own distribution
        k = min(self.top_logprobs, lp.size)
        top: list[int] = []
        if k:
            part = np.argpartition(-lp, k - 1)[:k]
            top = [int(i) for i in part[np.argsort(-lp[part], kind="stable")]]
        return TokenLogprob(self.token_text(tok), min(float(lp[tok]), 0.0),
                            tuple(self.token_text(i) for i in top),
                            tuple(min(float(lp[i]), 0.0) for i in top))
