"""The work folder of a calibration run (:class:`WorkDir`): what makes ``edge-moe calibrate`` resumable.

It holds the fixed sample list (``samples.jsonl``, checked by digest when a run resumes),
one append-only, fsynced JSONL file of scored rows per expert (a torn last line from a
killed write is cut off), the prompts' embeddings, and each expert's timed generate calls;
the layout is tabled in :mod:`edge_moe.jobs.calibrate`, which scores into it and turns it
into the calibration table and latency sidecar.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edge_moe.atomic import write_text
from edge_moe.errors import ConfigError, DataFormatError
from edge_moe.jobs.generation import GenerationCall, parse_calls
from edge_moe.jobs.samples import Sample, row_error

logger = logging.getLogger(__name__)

GENERATION_FORMAT = "edge-moe-generation-calls/1"


# ---------------------------------------------------------------- the work folder


def _sample_json(s: Sample) -> str:
    return json.dumps({**asdict(s), "options": list(s.options)}, sort_keys=True, ensure_ascii=False)


def samples_digest(samples: Sequence[Sample]) -> str:
    h = hashlib.sha256()
    for s in samples:
        h.update(_sample_json(s).encode())
        h.update(b"\n")
    return h.hexdigest()


@dataclass(frozen=True)
class ScoredRow:
    index: int
    logprobs: tuple[float, ...]
    ms: float
    tokens: int


class WorkDir:
    """The resumable state of one calibration run (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    @property
    def samples_file(self) -> Path:
        return self.path / "samples.jsonl"

    def expert_file(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"expert name {name!r} cannot name a file")
        return self.path / "experts" / f"{name}.jsonl"

    def init(self, samples: Sequence[Sample]) -> list[Sample]:
        """Write the sample list, or check that a resumed run asks for the same one."""
        if self.samples_file.is_file():
            have = self.samples()
            if samples_digest(have) != samples_digest(samples):
                raise ConfigError(
                    f"{self.samples_file} holds a different sample set ({len(have)} samples) from the "
                    f"one asked for ({len(samples)}): resume with the same dataset, --per-topic and "
                    "--seed, or use a new --work folder")
            return have
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.samples_file, "".join(_sample_json(s) + "\n" for s in samples))
        return list(samples)

    def samples(self) -> list[Sample]:
        if not self.samples_file.is_file():
            raise DataFormatError(f"{self.samples_file}: no sample list; run `edge-moe calibrate` first")
        out = []
        for n, line in enumerate(self.samples_file.read_text(encoding="utf-8").splitlines(), 1):
            try:
                d = json.loads(line)
                out.append(Sample(**{**d, "options": tuple(d["options"])}))
            except (json.JSONDecodeError, TypeError, KeyError) as exc:
                raise row_error(self.samples_file, n, f"not a sample ({exc})") from exc
        return out

    def scored(self, name: str, n_samples: int | None = None) -> dict[int, ScoredRow]:
        """The rows an expert has finished. A torn last line (the run was killed while
        writing it) is cut off so appending continues cleanly; any other bad line is an
        error naming it."""
        p = self.expert_file(name)
        if not p.is_file():
            return {}
        data = p.read_bytes()
        lines = data.split(b"\n")
        rows: dict[int, ScoredRow] = {}
        good = 0
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                good += len(raw) + 1
                continue
            try:
                d = json.loads(raw)
                row = ScoredRow(int(d["i"]), tuple(float(x) for x in d["logprobs"]), float(d["ms"]),
                                int(d["tokens"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                if n == len(lines) or (n == len(lines) - 1 and not lines[-1]):
                    logger.warning("%s: dropping a torn last line (an interrupted write)", p)
                    with p.open("r+b") as fh:
                        fh.truncate(good)
                    break
                raise row_error(p, n, f"not a scored row ({exc})") from exc
            if n_samples is not None and not 0 <= row.index < n_samples:
                raise row_error(p, n, f"sample index {row.index} is outside [0, {n_samples})")
            rows[row.index] = row
            good += len(raw) + 1
        return rows

    def append(self, name: str, row: ScoredRow) -> None:
        p = self.expert_file(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"i": row.index, "logprobs": [round(x, 7) for x in row.logprobs],
                           "ms": round(row.ms, 3), "tokens": row.tokens})
        with p.open("a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @property
    def embeddings_file(self) -> Path:
        return self.path / "embeddings.npy"

    def generation_file(self, name: str) -> Path:
        self.expert_file(name)  # the same name rule
        return self.path / "generation" / f"{name}.json"

    def generation_calls(self, name: str) -> list[GenerationCall] | None:
        """The expert's timed generate calls, or None when they were never timed."""
        p = self.generation_file(name)
        if not p.is_file():
            return None
        return parse_calls(_read_doc(p, GENERATION_FORMAT).get("calls"), f"{p}: calls")

    def save_generation(self, name: str, calls: Sequence[GenerationCall]) -> None:
        doc = {"format": GENERATION_FORMAT, "calls": [c.to_json() for c in calls]}
        write_text(self.generation_file(name), json.dumps(doc, indent=1) + "\n")


def _read_doc(p: Path, fmt: str) -> dict[str, Any]:
    """The JSON object in ``p`` whose ``format`` is ``fmt``; DataFormatError naming the file."""
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{p}: not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != fmt:
        raise DataFormatError(f"{p}: format must be {fmt!r}")
    return doc
