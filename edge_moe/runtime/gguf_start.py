"""Starting llama.cpp in this process, for :class:`~edge_moe.runtime.gguf.GgufRunner`: the
import, its CPU backend, its threads' wait policy and its log.

**CPU backends.** A ``llama-cpp-python`` built with ``GGML_BACKEND_DL`` and
``GGML_CPU_ALL_VARIANTS`` (``make install-gguf``) ships one CPU backend per x86 level and
picks one at run time, but scikit-build installs them to ``<site-packages>/bin``, where ggml
does not look. :func:`start_llama_cpp` makes the pick itself, and skips the AMX variant
unless ``EDGE_MOE_GGML_AMX=1``: ggml's AMX path crashed in the first decode on VMs of this
project's kind that report AMX (docs/design.md §6; not re-checked here: this EPYC has no AMX).

**Threads.** ggml's CPU backend meets its threads at an OpenMP barrier after every op,
and libgomp's default barrier spins. SmolLM2 Q4_1, 2 threads on 2 cores, greedy decode:
spinning gave 135 tok/s on a quiet machine but 0.8 tok/s with one core busy with another
process (1 thread: 83); ``OMP_WAIT_POLICY=PASSIVE`` gave 51 quiet and 63 busy. Nodes share
their cores (a coordinator, other nodes, an encoder), so the runner sets ``PASSIVE`` before
llama.cpp loads, unless the environment sets the policy (``OMP_WAIT_POLICY=ACTIVE`` for a
node with cores to itself); it has no effect if libgomp was loaded before.
``benchmarks/engine_bench.py`` measures both.

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

__all__ = ["EXTRA_HINT", "import_llama_cpp", "start_llama_cpp"]

EXTRA_HINT = ("pip install 'edge-moe[gguf]' (or `make install-gguf`, which builds it portably for "
              "these CPUs)")
_AMX_VARIANTS = ("sapphirerapids",)  # ggml's CPU variants built with AMX_TILE / AMX_INT8
_lock = threading.Lock()


def import_llama_cpp() -> Any:
    """``llama_cpp``, imported with the wait policy and log level above.

    Raises:
        RunnerError: it does not import (the message names the extra).
    """
    # before libgomp loads: it reads the variable once (the module docstring)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
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
