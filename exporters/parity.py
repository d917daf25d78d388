"""Parity of an exported decoder with its reference, against a per-precision tolerance table.

Two checks, in the style of onnxruntime's gpt2 helper:

- :func:`check_decoder_parity`: ONNX (through the node's own :class:`OrtRunner`) against
  the torch model. Prefill logits of fixed prompts (one at a time, then as one
  padded batch), 8 teacher-forced decode steps through the KV cache, and a 16-token
  greedy continuation that must match token for token.
- :func:`top1_agreement`: a quantised variant against its fp32 artifact, both in ORT:
  the share of a fixed prompt set on which the next-token argmax agrees.

A failure raises :class:`ParityError` carrying the :class:`ParityReport` (max diff, where
it occurred, NaN/Inf, argmax agreement, the two greedy continuations).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.errors import ParityError
from edge_moe.runtime.runners import OrtRunner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """What a precision must meet.

    Attributes:
        max_abs: largest allowed |logit difference| (None: logits are not compared).
        min_top1: smallest allowed share of positions whose argmax agrees.
        greedy_equal: the greedy continuation must match the reference exactly.
    """

    max_abs: float | None
    min_top1: float
    greedy_equal: bool


# fp32: SmolLM2-135M shows ~1e-4 with |logits| up to 33; tiny random models ~1e-6.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_abs=2e-3, min_top1=1.0, greedy_equal=True),
    "fp16": Tolerance(max_abs=5e-2, min_top1=0.98, greedy_equal=False),
    "bf16": Tolerance(max_abs=2.5e-1, min_top1=0.95, greedy_equal=False),
    "int8": Tolerance(max_abs=None, min_top1=0.90, greedy_equal=False),
    "int4": Tolerance(max_abs=None, min_top1=0.80, greedy_equal=False),
}

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Question: What is 12 times 7?\nAnswer:",
    "def fibonacci(n):\n    ",
)

# A fixed prompt set for top-1 agreement of quantised variants: facts, reasoning, code,
# multiple choice, chat-like text. Never change it silently: reported figures rest on it.
AGREEMENT_PROMPTS = (
    "The capital of France is",
    "The largest planet in the solar system is",
    "Water boils at a temperature of",
    "The chemical symbol for gold is",
    "The author of Romeo and Juliet is",
    "The speed of light is approximately",
    "Photosynthesis is the process by which",
    "The Great Wall of China was built to",
    "In 1969, the first humans landed on",
    "The square root of 144 is",
    "If a train travels 60 miles in one hour, in three hours it travels",
    "A triangle has three sides; a square has",
    "The opposite of hot is",
    "Monday, Tuesday, Wednesday,",
    "One, two, three, four,",
    "def add(a, b):\n    return",
    "for i in range(10):\n    print(",
    "import numpy as np\nx = np.",
    "SELECT name FROM users WHERE",
    "<html>\n<head>\n<title>",
    "Question: Which gas do plants absorb?\nA. Oxygen\nB. Carbon dioxide\nC. Helium\nD. Neon\nAnswer:",
    "Question: What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:",
    "Question: Who painted the Mona Lisa?\nA. Picasso\nB. Van Gogh\nC. Leonardo da Vinci\nD. Monet\nAnswer:",
    "Question: Which is a prime number?\nA. 4\nB. 6\nC. 7\nD. 9\nAnswer:",
    "Question: The heart pumps\nA. air\nB. blood\nC. food\nD. water\nAnswer:",
    "Once upon a time, in a small village,",
    "The best way to learn a new language is",
    "Dear Sir or Madam, I am writing to",
    "To make a cup of tea, first",
    "The weather today is sunny, so",
    "My favourite food is",
    "Machine learning is a field of",
    "The stock market fell sharply after",
    "She opened the door and saw",
    "Thank you very much for your",
    "The recipe calls for two cups of",
    "In conclusion, the results show that",
    "The main causes of the French Revolution were",
    "Translate to French: Good morning ->",
    "The sum of the angles of a triangle is",
)


@dataclass
class ParityReport:
    """The outcome of a parity check; ``passed`` is False when any problem was found."""

    precision: str
    tolerance: dict[str, Any]
    max_abs_diff: float = 0.0
    where: str = ""
    nan_or_inf: bool = False
    argmax_agreement: float = 1.0
    n_positions: int = 0
    greedy_reference: list[int] = field(default_factory=list)
    greedy_candidate: list[int] = field(default_factory=list)
    greedy_equal: bool = True
    all_position_agreement: float | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        head = "PASS" if self.passed else "FAIL"
        return (
            f"{head} {self.precision}: max|Δlogit|={self.max_abs_diff:.3g} at {self.where or '-'}; "
            f"argmax agreement {self.argmax_agreement:.3f} over {self.n_positions} positions; "
            f"greedy equal={self.greedy_equal}; NaN/Inf={self.nan_or_inf}"
            + ("" if self.passed else "; " + "; ".join(self.problems))
        )


class _Tracker:
    """Accumulates max diff, its place, NaN/Inf and argmax agreement."""

    def __init__(self) -> None:
        self.max_abs = 0.0
        self.where = ""
        self.nan_inf = False
        self.agree = 0
        self.total = 0

    def add(self, ref: np.ndarray, cand: np.ndarray, label: str) -> None:
        """Compare (N, V) logits of N positions."""
        ref = ref.reshape(-1, ref.shape[-1]).astype(np.float64)
        cand = cand.reshape(-1, cand.shape[-1]).astype(np.float64)
        if not np.isfinite(cand).all():
            self.nan_inf = True
            bad = np.argwhere(~np.isfinite(cand))[0]
            self.where = self.where or f"{label} position {bad[0]} token {bad[1]} (non-finite)"
        diff = np.abs(ref - cand)
        diff[~np.isfinite(diff)] = np.inf
        if diff.size and diff.max() > self.max_abs:
            pos, tok = np.unravel_index(int(np.argmax(diff)), diff.shape)
            self.max_abs = float(diff.max())
            self.where = f"{label} position {pos} token {tok}"
        self.agree += int((ref.argmax(-1) == cand.argmax(-1)).sum())
        self.total += ref.shape[0]

    def report(self, precision: str, tol: Tolerance, **fields: Any) -> ParityReport:
        """A ParityReport with this tracker's max diff, its place and NaN/Inf filled in."""
        return ParityReport(precision=precision, tolerance=asdict(tol), max_abs_diff=self.max_abs,
                            where=self.where, nan_or_inf=self.nan_inf, **fields)


def _torch_logits(
    model: Any, ids: list[list[int]], mask: np.ndarray | None, cache: Any
) -> np.ndarray:
    import torch

    t_ids = torch.tensor(ids, dtype=torch.long)
    kwargs: dict[str, Any] = {"input_ids": t_ids, "past_key_values": cache, "use_cache": True}
    if mask is not None:
        t_mask = torch.tensor(mask, dtype=torch.long)
        past = cache.get_seq_length()
        pos = (t_mask.cumsum(-1) - 1).clamp(min=0)[:, past:]
        kwargs.update(attention_mask=t_mask, position_ids=pos)
    with torch.no_grad():
        return model(**kwargs).logits.float().numpy()


def check_decoder_parity(
    model: Any,
    artifact_dir: str | Path,
    *,
    tok: Any | None = None,
    prompts: list[list[int]] | None = None,
    decode_steps: int = 8,
    greedy_tokens: int = 16,
    precision: str | None = None,
    raise_on_fail: bool = True,
) -> ParityReport:
    """Compare an ONNX decoder artifact with the torch causal LM it came from.

    Args:
        model: the transformers causal LM (fp32, eval).
        artifact_dir: the exported artifact.
        tok: its transformers tokenizer, to tokenise :data:`DEFAULT_PROMPTS`; without
            it, seeded random token ids are used.
        prompts: token-id prompts overriding the defaults.
        decode_steps: teacher-forced decode steps compared after each prefill.
        greedy_tokens: length of the greedy continuation that must match.
        precision: tolerance row (default: the manifest's precision).
        raise_on_fail: raise ParityError instead of returning a failed report.

    Raises:
        ParityError: beyond tolerance (``.report`` holds the :class:`ParityReport`).
    """
    from transformers import DynamicCache

    runner = OrtRunner(artifact_dir)
    prec = precision or runner.manifest.precision
    tol = TOLERANCES[prec]
    if prompts is None:
        if tok is not None:
            prompts = [list(tok(p)["input_ids"]) for p in DEFAULT_PROMPTS]
        else:
            rng = np.random.default_rng(0)
            vocab = int(runner.manifest.decoder["vocab_size"])  # type: ignore[index]
            prompts = [rng.integers(0, vocab, n).tolist() for n in (7, 12, 3)]
    tr = _Tracker()
    for i, ids in enumerate(prompts):
        cache = DynamicCache()
        ref = _torch_logits(model, [ids], None, cache)  # (1, T, V)
        cand, past = runner.forward(np.array([ids]))
        tr.add(ref[0], cand[0], f"prompt {i} prefill")
        for step in range(decode_steps):
            nxt = int(ref[0, -1].argmax())  # teacher-forced by the reference
            ref = _torch_logits(model, [[nxt]], None, cache)
            cand, past = runner.forward(np.array([[nxt]]), None, past)
            tr.add(ref[0], cand[0], f"prompt {i} decode step {step}")
    # One padded batch of all prompts: the attention mask and positions must agree. Left
    # padding where the graph takes position_ids; GroupQueryAttention graphs (ortgenai)
    # derive positions from the mask and take right padding only.
    width = max(len(p) for p in prompts)
    left = runner.has_position_ids

    def pad(row: list[int], fill: int) -> list[int]:
        extra = [fill] * (width - len(row))
        return extra + row if left else row + extra

    batch = [pad(p, 0) for p in prompts]
    mask = np.array([pad([1] * len(p), 0) for p in prompts], np.int64)
    ref_b = _torch_logits(model, batch, mask, DynamicCache())
    cand_b, _ = runner.forward(np.array(batch), mask)
    valid = mask.astype(bool)
    tr.add(ref_b[valid], cand_b[valid], f"{'left' if left else 'right'}-padded batch")
    # Greedy continuation, each side on its own cache.
    g_ref: list[int] = []
    g_cand: list[int] = []
    cache = DynamicCache()
    ref = _torch_logits(model, [prompts[0]], None, cache)
    cand, past = runner.forward(np.array([prompts[0]]))
    for _ in range(greedy_tokens):
        g_ref.append(int(ref[0, -1].argmax()))
        g_cand.append(int(cand[0, -1].argmax()))
        ref = _torch_logits(model, [[g_ref[-1]]], None, cache)
        cand, past = runner.forward(np.array([[g_cand[-1]]]), None, past)
    report = tr.report(
        prec,
        tol,
        argmax_agreement=tr.agree / max(tr.total, 1),
        n_positions=tr.total,
        greedy_reference=g_ref,
        greedy_candidate=g_cand,
        greedy_equal=g_ref == g_cand,
    )
    _judge(report, tol)
    logger.info("parity %s: %s", artifact_dir, report.summary())
    if raise_on_fail and not report.passed:
        raise ParityError(f"{artifact_dir}: {report.summary()}", report)
    return report


def torch_continuation_scores(
    model: Any, encode: Any, prompt: str, options: list[str] | tuple[str, ...]
) -> np.ndarray:
    """The reference for ``score_options(mode="continuation")``: torch's summed log-probs
    of each option's tokens after the prompt, one full forward per option, renormalised.

    Args:
        model: the transformers causal LM.
        encode: text -> token ids (the runner's own :meth:`OrtRunner.encode`).
    """
    import torch

    n = len(encode(prompt))
    scores = []
    for o in options:
        ids = encode(prompt + o)
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        scores.append(sum(float(lp[j - 1, ids[j]]) for j in range(n, len(ids))))
    arr = np.array(scores)
    return arr - np.logaddexp.reduce(arr)


def _judge(report: ParityReport, tol: Tolerance) -> None:
    if report.nan_or_inf:
        report.problems.append(f"NaN/Inf in candidate logits ({report.where})")
    if tol.max_abs is not None and report.max_abs_diff > tol.max_abs:
        report.problems.append(f"max|Δlogit| {report.max_abs_diff:.3g} > {tol.max_abs:g}")
    if report.argmax_agreement < tol.min_top1:
        report.problems.append(
            f"argmax agreement {report.argmax_agreement:.3f} < {tol.min_top1:.3f}"
        )
    if tol.greedy_equal and not report.greedy_equal:
        first = next(
            i
            for i, (a, b) in enumerate(
                zip(report.greedy_reference, report.greedy_candidate, strict=True)
            )
            if a != b
        )
        report.problems.append(f"greedy continuation differs from token {first}")


def top1_agreement(
    reference: OrtRunner,
    candidate: OrtRunner,
    prompts: tuple[str, ...] | list[str] = AGREEMENT_PROMPTS,
    *,
    raise_on_fail: bool = True,
) -> ParityReport:
    """Next-token argmax agreement of a variant with its reference on a prompt set.

    ``argmax_agreement`` is the share of prompts whose next token (after the prompt)
    agrees; ``extra`` positions inside the prompts are folded into ``max_abs_diff`` only.

    Raises:
        ParityError: agreement below the candidate precision's ``min_top1``.
    """
    prec = candidate.manifest.precision
    tol = TOLERANCES[prec]
    agree = 0
    tr = _Tracker()
    for i, p in enumerate(prompts):
        ids = np.array([reference.encode(p)])
        ref, _ = reference.forward(ids)
        cand, _ = candidate.forward(ids)
        tr.add(ref[0], cand[0], f"prompt {i}")
        agree += int(ref[0, -1].argmax() == cand[0, -1].argmax())
    report = tr.report(
        prec,
        tol,
        argmax_agreement=agree / len(prompts),
        n_positions=len(prompts),
        all_position_agreement=tr.agree / max(tr.total, 1),
    )
    report.problems += [] if not report.nan_or_inf else [f"NaN/Inf ({report.where})"]
    if report.argmax_agreement < tol.min_top1:
        report.problems.append(
            f"next-token top-1 agreement {report.argmax_agreement:.3f} < {tol.min_top1:.3f}"
        )
    logger.info(
        "agreement %s vs %s: %s", candidate.artifact_dir, reference.artifact_dir, report.summary()
    )
    if raise_on_fail and not report.passed:
        raise ParityError(f"{candidate.artifact_dir}: {report.summary()}", report)
    return report


ENCODER_MIN_COSINE = 0.999

ENCODER_SENTENCES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "What is the capital of France?",
    "Solve for x: 3x + 5 = 20.",
    "def quicksort(xs): return xs if len(xs) < 2 else ...",
    "Which of the following best describes the role of mitochondria in the cell?",
    "ok",
)


def check_encoder_parity(
    model: Any,
    tok: Any,
    artifact_dir: str | Path,
    sentences: tuple[str, ...] = ENCODER_SENTENCES,
    *,
    raise_on_fail: bool = True,
) -> dict[str, Any]:
    """Cosine between the ONNX encoder (through :class:`EncoderRunner`) and torch.

    Returns:
        ``{"min_cosine", "max_abs_diff", "n", "nan_or_inf", "passed"}``.

    Raises:
        ParityError: a cosine below :data:`ENCODER_MIN_COSINE`, or NaN/Inf.
    """
    from edge_moe.runtime.runners import EncoderRunner
    from exporters.pooling import embed_torch

    ref = embed_torch(model, tok, list(sentences)).astype(np.float64)
    cand = EncoderRunner(artifact_dir).embed(list(sentences)).astype(np.float64)
    finite = bool(np.isfinite(cand).all())
    cos = (ref * cand).sum(-1) / (np.linalg.norm(ref, axis=-1) * np.linalg.norm(cand, axis=-1))
    report = {
        "min_cosine": float(np.nan_to_num(cos, nan=-1.0).min()),
        "max_abs_diff": float(np.abs(ref - cand).max()),
        "n": len(sentences),
        "nan_or_inf": not finite,
        "worst_sentence": int(np.nan_to_num(cos, nan=-1.0).argmin()),
    }
    report["passed"] = finite and report["min_cosine"] >= ENCODER_MIN_COSINE
    if raise_on_fail and not report["passed"]:
        raise ParityError(
            f"{artifact_dir}: encoder cosine {report['min_cosine']:.6f} < {ENCODER_MIN_COSINE} "
            f"(sentence {report['worst_sentence']}, NaN/Inf={not finite})",
            report,
        )
    return report
