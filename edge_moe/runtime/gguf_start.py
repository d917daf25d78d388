"""Starting llama.cpp in this process, for :class:`~edge_moe.runtime.gguf.GgufRunner`: the
import, its CPU backend, its threads' wait policy and its log.

**CPU backends.** A ``llama-cpp-python`` built with ``GGML_BACKEND_DL`` and
``GGML_CPU_ALL_VARIANTS`` (``make install-gguf``) ships one CPU backend per x86 level and
picks one at run time, but scikit-build installs them to ``<site-packages>/bin``, where ggml
does not look. :func:`start_llama_cpp` makes the pick itself, and skips the AMX variant
unless ``EDGE_MOE_GGML_AMX=1``: ggml's AMX path crashed in the first decode on VMs of this
project's kind that report AMX (docs/design.md §6; not re-checked here: this EPYC has no AMX).

**Threads.** ggml's CPU backend meets its threads at an OpenMP barrier after every op,
and a thread that arrives first either polls (spins) or sleeps in the kernel. libgomp's
default polls for a long time; ``OMP_WAIT_POLICY=PASSIVE`` sleeps at once. SmolLM2 Q4_1, 2
threads on 2 cores, greedy decode tok/s by ``GOMP_SPINCOUNT`` (polls before sleeping):

=============================  =====  =====  =====  =====  ================
spin count                     0      100    300    1000   ACTIVE (forever)
quiet machine                  50     96     131    136    135
one core busy (another proc.)  57     55     44     34     43 (0.8 seen)
=============================  =====  =====  =====  =====  ================

A runner sleeps at once by default (:data:`DEFAULT_SPIN` 0); a node is told its fleet file's
``nodes[].spin``, by default 300 when it is the only node on its host and 0 when it shares
the cores with other nodes, where another process often holds a core (the second row) and
polling can cost far more (:func:`nodes.build.node_spin`). The demo's three nodes on 2 cores
did not separate 0 from 100 (first-tier Gemma questions 172–237 ms at 0, 189–257 at 100,
runs minutes apart). The runner sets
``GOMP_SPINCOUNT`` before llama.cpp loads, unless the environment sets ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` itself; libgomp reads them once, so the first runner in a process decides
for the process (:func:`spin_in_effect`).
``benchmarks/engine_bench.py`` measures the runner's setting against libgomp's spinning, and
``benchmarks/spin_bench.py`` spin counts up to libgomp's default (300,000: a stock llama.cpp
process) on SmolLM2 and Qwen-1.5B, quiet and beside a busy process.

numpy-free: ``ctypes`` and ``llama_cpp`` only.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from pathlib import Path
from typing import Any

from edge_moe.errors import RunnerError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_SPIN", "EXTRA_HINT", "WAIT_VARS", "import_llama_cpp", "spin_in_effect", "start_llama_cpp"]

EXTRA_HINT = ("pip install 'edge-moe[gguf]' (or `make install-gguf`, which builds it portably for "
              "these CPUs)")
DEFAULT_SPIN = 0  # polls at a barrier before sleeping (the module docstring's table)
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")  # libgomp's wait at a barrier; set, they win
_AMX_VARIANTS = ("sapphirerapids",)  # ggml's CPU variants built with AMX_TILE / AMX_INT8
_lock = threading.Lock()


def import_llama_cpp(spin: int | None = None) -> Any:
    """``llama_cpp``, imported with the threads' spin count and log level above.

    Args:
        spin: polls at a barrier before a thread sleeps (None: :data:`DEFAULT_SPIN`); ignored
            where the environment sets ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``, and once
            libgomp has loaded in this process.

    Raises:
        RunnerError: it does not import (the message names the extra); a negative ``spin``.
    """
    if spin is not None and int(spin) < 0:
        raise RunnerError(f"runner 'llama.cpp': spin must be >= 0 (got {spin})")
    # before libgomp loads: it reads the variables once (the module docstring)
    if not any(v in os.environ for v in WAIT_VARS):
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # GOMP_SPINCOUNT wins over it; 0 polls: sleep
        os.environ["GOMP_SPINCOUNT"] = str(DEFAULT_SPIN if spin is None else int(spin))
    try:
        import llama_cpp
    except Exception as exc:  # ImportError, or OSError when its shared library will not load
        raise RunnerError(
            f"runner 'llama.cpp' needs the `llama-cpp-python` package, which does not import here "
            f"({type(exc).__name__}: {exc}); {EXTRA_HINT}"
        ) from exc
    # llama.cpp's log: printed to stderr at NOTSET, and its warnings map to ERROR in this
    # version's table (ggml's level enum moved), so only CRITICAL keeps them out
    quiet = logging.getLogger("llama-cpp-python")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.CRITICAL)
    return llama_cpp


def spin_in_effect() -> int | str:
    """What llama.cpp's threads do at a barrier in this process, as libgomp was told: the spin
    count, or the wait policy (``"ACTIVE"``, ``"PASSIVE"``) where no count is set."""
    count = os.environ.get("GOMP_SPINCOUNT")
    if count is not None:
        try:
            return int(count)
        except ValueError:
            return count
    return os.environ.get("OMP_WAIT_POLICY", "default")


_started: list[str | None] = []  # once per process: the CPU variant loaded (None: built in)


def _loaded_ggml(lib_dir: Path) -> Any:
    """The ``libggml`` that ``libllama`` uses, found by its soname (a wheel holds copies, not
    symlinks: ``libggml.so`` is another library with its own, empty backend registry)."""
    try:
        return ctypes.CDLL("libggml.so.0", mode=os.RTLD_NOLOAD)
    except OSError:
        return ctypes.CDLL(str(lib_dir / "libggml.so.0"))


def start_llama_cpp(ll: Any, allow_amx: bool | None = None) -> str | None:
    """Load llama.cpp's CPU backend and ``llama_backend_init``, once per process.

    A ``GGML_BACKEND_DL`` build links no CPU backend in (ggml would look for one beside the
    Python executable and in the working directory): each ``libggml-cpu-<variant>.so`` beside
    ``libggml.so`` reports its score on this CPU (``ggml_backend_score``: 0 where an
    instruction it uses is missing) and the best is loaded; AMX variants only when
    ``allow_amx`` (default: ``EDGE_MOE_GGML_AMX=1``).

    Returns:
        The variant loaded, or None for a build with its CPU backend linked in.

    Raises:
        RunnerError: no variant runs on this CPU, or the best will not load.
    """
    with _lock:
        if _started:
            return _started[0]
        if allow_amx is None:
            allow_amx = os.environ.get("EDGE_MOE_GGML_AMX") == "1"
        lib_dir = Path(ll.__file__).parent / "lib"
        variant = None
        scores: dict[Path, int] = {}
        # scikit-build installs ggml's backend modules to <site-packages>/bin, not beside libggml
        found = [*lib_dir.glob("libggml-cpu-*.so"), *(lib_dir.parents[1] / "bin").glob("libggml-cpu-*.so")]
        for path in sorted(found):
            if allow_amx or path.stem.removeprefix("libggml-cpu-") not in _AMX_VARIANTS:
                fn = getattr(ctypes.CDLL(str(path)), "ggml_backend_score", None)
                scores[path] = int(fn()) if fn is not None else 0
        if scores:
            best = max(scores, key=lambda p: scores[p])
            if scores[best] <= 0:
                raise RunnerError(f"no llama.cpp CPU backend in {lib_dir} runs on this CPU (scores: "
                                  f"{ {p.name: s for p, s in scores.items()} })")
            ggml = _loaded_ggml(lib_dir)
            ggml.ggml_backend_load.restype = ctypes.c_void_p
            ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
            if not ggml.ggml_backend_load(str(best).encode()):
                raise RunnerError(f"llama.cpp could not load its CPU backend {best}")
            variant = best.stem.removeprefix("libggml-cpu-")
            logger.info("llama.cpp CPU backend: %s (score %d of %s)", variant, scores[best],
                        {p.stem.removeprefix("libggml-cpu-"): s for p, s in scores.items()})
        ll.llama_backend_init()
        _started.append(variant)
        return variant
