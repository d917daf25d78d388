"""A GGUF requantised to another GGUF type with llama.cpp's own quantiser, for runner
``llama.cpp``: ``edge-moe export SOURCE --gguf-type Q8_0``.

Why: llama.cpp's CPU backend has fast matrix kernels for some block types and not others.
On this project's 2-core AVX-512 EPYC, SmolLM2-135M's Q4_1 file (its offline asset) runs
prompts through the generic dot product, one row at a time; the same weights requantised to
Q8_0 take the tiled kernels (measured, 2 threads, ~130-token prompt, 64 new tokens: TTFT
399 → 171 ms, decode 127 → 137 tok/s, letter agreement with the fp32 column 1.00 for both,
ms per MMLU question 246 → 122). Requantising a 4-bit file to 8 bits moves each weight by at
most 1/254 of its block's largest value, but the kernels differ too (activations quantised
per block for each type), so log-probs move: SmolLM2's Q8_0 letter log-probs are up to 0.56
nats from the Q4_1 file's on 12 MMLU questions, while both stay within 0.39 of the fp32
reference. Going down (Q4_K_M → Q4_0) is a second quantisation and can cost agreement
(Qwen2.5-1.5B: 0.97 → 0.90); the parity check below says so.

The output is ``<out>/<stem>.<TYPE>.gguf`` (the type in the name is what
:func:`gguf_precision` and users read), default
``$EDGE_MOE_CACHE/artifacts/<stem>-<sha[:12]>-gguf/``, with a ``<file>.json`` record beside
it: the source, its sha256, the type, llama.cpp's version and the parity report. A record
that matches (source sha, type) makes a second call free.

**Parity**: the next-token argmax of the requantised file against the source file on
:data:`exporters.parity.AGREEMENT_PROMPTS` (raw prompts, no chat template), against the
tolerance table of :mod:`exporters.parity` for the output's precision (int8: 0.90, fp16:
0.98); a failure raises :class:`~edge_moe.errors.ParityError` and keeps no file.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from edge_moe.atomic import write_text
from edge_moe.errors import ArtifactError, ConfigError, ParityError
from edge_moe.paths import artifacts_dir

logger = logging.getLogger(__name__)

# the output types offered, with the fleet YAML precision each is served as
GGUF_TYPES: dict[str, str] = {"Q8_0": "int8", "F16": "fp16", "BF16": "bf16", "Q4_0": "int4", "Q4_K_M": "int4"}
_FTYPE = {"Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "F16": "LLAMA_FTYPE_MOSTLY_F16", "BF16": "LLAMA_FTYPE_MOSTLY_BF16",
          "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0", "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
# a quantisation's name at the end of a GGUF file's stem: "gemma-3-270m-q4_k_m", "x.Q8_0"
_QUANT = r"(?:Q\d(?:_[A-Z0-9]+)*|F32|F16|BF16)"
_QUANT_SUFFIX = re.compile(rf"[.\-_]{_QUANT}$", re.I)
_QUANT_IN_NAME = re.compile(rf"(?:^|[.\-_])({_QUANT})(?=\.gguf$)", re.I)
# by the name's first two characters where the whole name is not known (Q4_K_S, Q8_1, ...)
_PRECISION = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "Q8": "int8", "Q4": "int4"}
RECORD_VERSION = 1


def gguf_precision(path: Path) -> tuple[str, str]:
    """(the fleet YAML's precision, the quantisation's name) of a GGUF, from its file name
    (``gemma-3-270m-q4_k_m.gguf`` → ``("int4", "Q4_K_M")``); ``("int4", "?")`` when the name
    does not say (every GGUF asset of the project is 4-bit)."""
    m = _QUANT_IN_NAME.search(path.name)
    if not m:
        return "int4", "?"
    quant = m.group(1).upper()
    return _PRECISION.get(quant, _PRECISION.get(quant[:2], "int4")), quant


def gguf_type(value: str) -> str:
    """``value`` as one of :data:`GGUF_TYPES` (case-insensitive); ConfigError otherwise."""
    t = value.strip().upper()
    if t not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type {value!r}: expected one of {', '.join(GGUF_TYPES)}")
    return t


def resolve_gguf(source: str | Path) -> Path:
    """A ``.gguf`` path, or an offline asset name whose file is a GGUF (assembled from the
    installed packages, nothing installed)."""
    p = Path(source)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ArtifactError(f"GGUF file not found: {p}")
        with p.open("rb") as fh:
            if fh.read(4) != b"GGUF":
                raise ArtifactError(f"{p} is not a GGUF file (it does not start with the bytes 'GGUF')")
        return p
    from exporters.assets import fetch_asset

    path = Path(fetch_asset(str(source), install=False))
    if path.suffix.lower() != ".gguf":
        raise ConfigError(f"--gguf-type needs a GGUF source; {source!r} is {path}")
    return path


def requantized_path(src: Path, type_: str, out_dir: Path | None, sha: str) -> Path:
    stem = _QUANT_SUFFIX.sub("", src.stem)
    folder = out_dir if out_dir is not None else artifacts_dir() / f"{stem}-{sha[:12]}-gguf"
    return folder / f"{stem}.{type_}.gguf"


def _quantize(ll: Any, src: Path, dst: Path, type_: str, threads: int) -> None:
    params = ll.llama_model_quantize_default_params()
    params.ftype = getattr(ll, _FTYPE[type_])
    params.allow_requantize = True  # the source is already quantised
    params.nthread = threads
    rc = ll.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0 or not dst.is_file():
        raise ArtifactError(f"llama.cpp could not requantise {src} to {type_} (llama_model_quantize returned {rc})")


def _record_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def requantized_record(path: Path) -> dict[str, Any]:
    """The record beside a file :func:`requantize_gguf` wrote ({} when there is none)."""
    try:
        return dict(json.loads(_record_path(path).read_text()))
    except (OSError, ValueError):
        return {}


def parity(source: Path, candidate: Path, precision: str, threads: int) -> dict[str, Any]:
    """Next-token argmax agreement of ``candidate`` with ``source`` on the fixed prompt set
    (the module docstring); the report as a dict with ``passed`` and ``problems``."""
    from edge_moe.runtime.gguf import GgufRunner
    from exporters.parity import AGREEMENT_PROMPTS, TOLERANCES

    tol = TOLERANCES[precision]
    firsts: dict[str, list[int]] = {}
    for label, path in (("source", source), ("candidate", candidate)):
        with GgufRunner(path, intra_op_threads=threads, prefix_reuse="off") as r:
            # the greedy next token; -1 for end of sequence (a generation leaves EOS out)
            firsts[label] = [(r.generate_ids(r.encode(p), 1).token_ids or [-1])[0] for p in AGREEMENT_PROMPTS]
    agree = sum(a == b for a, b in zip(firsts["source"], firsts["candidate"], strict=True)) / len(AGREEMENT_PROMPTS)
    problems = ([f"next-token top-1 agreement {agree:.3f} < {tol.min_top1:.3f}"] if agree < tol.min_top1 else [])
    return {"precision": precision, "prompts": len(AGREEMENT_PROMPTS), "argmax_agreement": agree,
            "min_top1": tol.min_top1, "passed": not problems, "problems": problems}


def requantize_gguf(source: str | Path, type_: str = "Q8_0", out_dir: Path | None = None, *,
                    check: bool = True, force: bool = False, threads: int | None = None) -> Path:
    """``source`` (a .gguf file or GGUF asset) requantised to ``type_``; the new file's path.

    Raises:
        ConfigError: an unknown type, or a source that is not a GGUF.
        ArtifactError: the source is missing, or llama.cpp fails.
        ParityError: the requantised file disagrees with the source beyond the tolerance.
        RunnerError: llama.cpp is not installed (``make install-gguf``).
    """
    from edge_moe.runtime.gguf_start import import_llama_cpp

    type_ = gguf_type(type_)
    src = resolve_gguf(source)
    from exporters.assets import known_sha256, sha256_file

    sha = known_sha256(src)
    dst = requantized_path(src, type_, out_dir, sha)
    want = {"version": RECORD_VERSION, "source_sha256": sha, "type": type_}
    if not force and dst.is_file():
        rec = requantized_record(dst)
        if {k: rec.get(k) for k in want} == want and (rec.get("parity") or {}).get("passed", not check):
            logger.info("requantised GGUF cached: %s", dst)
            return dst
    ll = import_llama_cpp()
    n = threads or max(1, len(os.sched_getaffinity(0)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.tmp.gguf")  # the runner wants .gguf
    t0 = time.perf_counter()
    try:
        _quantize(ll, src, tmp, type_, n)
        report = parity(src, tmp, GGUF_TYPES[type_], n) if check else None
        if report is not None and not report["passed"]:
            raise ParityError(f"{src} requantised to {type_}: " + "; ".join(report["problems"]), report)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    write_text(_record_path(dst), json.dumps({**want, "source": str(src), "file": dst.name, "sha256": sha256_file(dst),
                                   "bytes": dst.stat().st_size, "source_bytes": src.stat().st_size,
                                   "llama_cpp_python": getattr(ll, "__version__", "?"),
                                   "seconds": round(time.perf_counter() - t0, 1), "parity": report}, indent=1) + "\n")
    logger.info("requantised %s to %s: %s", src, type_, dst)
    return dst

