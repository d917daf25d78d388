"""The generation cost model: time real ``generate`` calls, fit prefill + per-token costs.

A free-form query (no options, up to T = ``max_new_tokens`` new tokens) costs one prefill
and then one decode step per new token, so each expert's cost on category c is modelled as

    ms(T) = prefill_ms[c] + T * per_token_ms[c]        J(T) = prefill_j[c] + T * j_per_token[c]

(:class:`edge_moe.profiles.GenerationCosts`). Planning with the option-scoring costs
instead under-counts a generation several times over.

**Measuring** (:func:`generation_plan`, :func:`measure_generation`). Per category, a few
of the prompts that category's users send (calibrate takes the first samples of each
category) are generated at ``max_new_tokens=1`` (a prefill and no decode step), and a few
of them, one per category by default, again at a longer length (16 by default). One
untimed warm-up call goes first. Each call is timed as its wall ms (tokenise, prefill,
decode), and its *returned* ``n_tokens`` is kept, since a generation may stop early at EOS.

**Fitting** (:func:`fit_generation`), per expert over all its calls:

1. Least squares of the call's ms on its ``n_tokens`` with one intercept per category
   (prompt lengths differ by category) and one slope (a decode step costs the same whatever
   the topic): the slope is the within-category estimator
   ``b = Σ (n - n̄_c)(ms - m̄_c) / Σ (n - n̄_c)²``, clipped at 0, and
   ``a_c = max(0, m̄_c - b n̄_c)``. These are the mean-like ``prefill_ms`` and ``per_token_ms``.
2. When no category has two calls of different ``n_tokens`` (every call stopped at the same
   length: a one-token toy, or EOS at once), the slope cannot be fitted. Then the prefill and
   every token are each charged ``m̄_c / (n̄_c + 1)``, i.e. a decode step is taken to cost as
   much as the prefill; it over-, not under-predicts longer replies.
3. The latency figures are scaled by a margin: the p95 (``quantile``) of measured ÷ fitted ms
   over the calls, so ``prefill_ms + T per_token_ms`` is a conservative, p95-like prediction
   like the scoring ``latency_ms``. A handful of calls says little about a p95 (with as many
   calls as parameters the fit is exact and that margin 1), so each category's margin is at
   least its *scoring* p95 ÷ mean ms (``min_margin`` of :func:`generation_figures`): those
   are many prefills of the same category's prompts, the part of a generation whose spread
   (prompt length, load) dominates short replies.

**Energy** (:func:`generation_figures`) is modelled as for scoring (``edge_moe.jobs.profile``):
the device class's busy W × the *fitted* (margin-free, mean-like) times, ``modelled`` on the
class the times were measured on; on another class both times are divided by its relative
throughput and every figure is ``projected``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edge_moe.errors import ArtifactError, ConfigError, DataFormatError
from edge_moe.profiles import Figure, GenerationFigures

logger = logging.getLogger(__name__)

SHORT_TOKENS = 1  # a prefill and no decode step
LONG_TOKENS = 16


@dataclass(frozen=True)
class GenerationCall:
    """One timed ``runner.generate(prompt, max_new_tokens)`` call."""

    category: str
    max_new_tokens: int
    n_tokens: int  # what the call returned (it may stop early at EOS)
    ms: float  # wall time of the whole call

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ms": round(self.ms, 3)}


@dataclass(frozen=True)
class PlannedCall:
    category: str
    prompt: str
    max_new_tokens: int


def generation_plan(prompts: Mapping[str, Sequence[str]], max_new_tokens: int = LONG_TOKENS,
                    long_calls: int | None = None) -> list[PlannedCall]:
    """Every prompt at ``max_new_tokens=1``, then ``long_calls`` of them (default: one per
    category) again at ``max_new_tokens``, taken round-robin over the categories."""
    if max_new_tokens <= SHORT_TOKENS:
        raise ConfigError(f"max_new_tokens={max_new_tokens} must be > {SHORT_TOKENS} to time decode steps")
    plan = [PlannedCall(c, p, SHORT_TOKENS) for c, ps in prompts.items() for p in ps]
    n_long = sum(1 for ps in prompts.values() if ps) if long_calls is None else long_calls
    depth = max((len(ps) for ps in prompts.values()), default=0)
    order = [PlannedCall(c, ps[k], max_new_tokens) for k in range(depth) for c, ps in prompts.items()
             if k < len(ps)]
    return plan + order[:n_long]


def measure_generation(runner: Any, plan: Sequence[PlannedCall], *, warmup: bool = True) -> list[GenerationCall]:
    """Time each planned call of ``runner.generate(prompt, max_new_tokens)`` (as a node calls it).

    Raises:
        ArtifactError: the runner returned no sane ``n_tokens``.
    """
    if warmup and plan:
        runner.generate(plan[0].prompt, SHORT_TOKENS)
    out = []
    for p in plan:
        t0 = time.perf_counter()
        gen = runner.generate(p.prompt, p.max_new_tokens)
        ms = (time.perf_counter() - t0) * 1e3
        n = getattr(gen, "n_tokens", None)
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= p.max_new_tokens:
            raise ArtifactError(f"generate(max_new_tokens={p.max_new_tokens}) returned n_tokens={n!r}")
        out.append(GenerationCall(p.category, p.max_new_tokens, n, ms))
    return out


def parse_calls(raw: Any, where: str) -> list[GenerationCall]:
    """Timed calls from JSON (the latency document, the work folder); errors name the field."""
    if not isinstance(raw, list) or not raw:
        raise DataFormatError(f"{where} must be a non-empty list of timed generate calls")
    out = []
    for k, d in enumerate(raw):
        w = f"{where}[{k}]"
        if not isinstance(d, dict) or set(d) - {"category", "max_new_tokens", "n_tokens", "ms", "i"}:
            raise DataFormatError(f"{w}={d!r} must be an object of category, max_new_tokens, n_tokens, ms")
        c, t, n, ms = (d.get(key) for key in ("category", "max_new_tokens", "n_tokens", "ms"))
        if not isinstance(c, str) or not c:
            raise DataFormatError(f"{w}.category={c!r} must be a non-empty string")
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise DataFormatError(f"{w}.max_new_tokens={t!r} must be an integer >= 1")
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= t:
            raise DataFormatError(f"{w}.n_tokens={n!r} must be an integer in [0, max_new_tokens={t}]")
        if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
            raise DataFormatError(f"{w}.ms={ms!r} must be a finite number >= 0")
        out.append(GenerationCall(c, t, n, float(ms)))
    return out


@dataclass(frozen=True)
class GenerationFit:
    """One expert's fitted model (see the module docstring)."""

    prefill_ms: dict[str, float]  # fitted, margin-free (mean-like)
    per_token_ms: dict[str, float]
    margin: float  # the quantile of measured / fitted ms; the latency figures are scaled by it
    n_calls: int
    slope_fitted: bool  # False: no spread in n_tokens, the prefill-as-a-token fallback

    def latency_ms(self, category: str, max_new_tokens: int) -> float:
        """The conservative prediction for one category (what the profile's figures give)."""
        return self.margin * (self.prefill_ms[category] + max_new_tokens * self.per_token_ms[category])


def fit_generation(calls: Sequence[GenerationCall], quantile: float | None = 95.0) -> GenerationFit:
    """Fit prefill and per-token ms per category (the rule is in the module docstring).

    Args:
        calls: one expert's timed calls, any categories.
        quantile: the percentile of measured / fitted ms that scales the latency (95 for a
            p95-like figure, 50 for a median); ``None``: no margin (1.0).

    Raises:
        DataFormatError: no calls.
    """
    if not calls:
        raise DataFormatError("no timed generate calls to fit")
    cats = list(dict.fromkeys(c.category for c in calls))
    g = np.array([cats.index(c.category) for c in calls])
    n = np.array([c.n_tokens for c in calls], np.float64)
    ms = np.array([c.ms for c in calls], np.float64)
    counts = np.bincount(g, minlength=len(cats))
    n_bar = np.bincount(g, n, len(cats)) / counts
    m_bar = np.bincount(g, ms, len(cats)) / counts
    dn, dm = n - n_bar[g], ms - m_bar[g]
    sxx = float(dn @ dn)
    fitted = sxx > 1e-12
    if fitted:
        b = np.full(len(cats), max(0.0, float(dn @ dm) / sxx))
        a = np.maximum(0.0, m_bar - b * n_bar)
    else:
        a = m_bar / (n_bar + 1.0)
        b = a.copy()
    pred = a[g] + b[g] * n
    ok = pred > 0
    margin = 1.0
    if quantile is not None and ok.any():
        margin = float(np.percentile(ms[ok] / pred[ok], quantile))
    return GenerationFit({c: float(a[i]) for i, c in enumerate(cats)}, {c: float(b[i]) for i, c in enumerate(cats)},
                         margin, len(calls), fitted)


def _sig(x: float) -> float:
    return float(f"{x:.6g}")


def generation_figures(fit: GenerationFit, power_busy_w: float, *, speed: float = 1.0,
                       projected: bool = False, min_margin: Mapping[str, float] | None = None
                       ) -> dict[str, GenerationFigures]:
    """The profile's figures per category: latency = fit × margin / speed (``measured``),
    energy = busy W × fitted time / speed (``modelled``); all ``projected`` with ``projected``.

    Args:
        min_margin: category -> the least latency margin (the scoring p95 ÷ mean ms there).
    """
    lat_src, en_src = ("projected", "projected") if projected else ("measured", "modelled")
    out = {}
    for c in fit.prefill_ms:
        pre, tok = fit.prefill_ms[c] / speed, fit.per_token_ms[c] / speed
        margin = max(fit.margin, (min_margin or {}).get(c, 0.0))
        out[c] = GenerationFigures(Figure(round(pre * margin, 3), lat_src),
                                   Figure(round(tok * margin, 3), lat_src),
                                   Figure(_sig(power_busy_w * pre / 1e3), en_src),
                                   Figure(_sig(power_busy_w * tok / 1e3), en_src))
    return out
