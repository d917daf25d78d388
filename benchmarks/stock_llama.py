"""llama.cpp as a user runs it from Python, in a process of its own (not a test): the baseline
"stock" of ``benchmarks/served_paired.py``.

``llama_cpp.Llama`` with its own defaults (``n_ctx`` 512, ``n_batch`` 512, f16 KV cache, no
flash attention, its prompt cache, libgomp's default wait at ggml's barriers: nothing in the
environment) except the threads, which are the served node's (``n_threads`` and
``n_threads_batch``; its default is half the cores), and ``verbose=False``. Each request is
``create_completion`` on the prompt the node computes (the GGUF's chat template around the
user's text, as :meth:`GgufRunner.format_prompt <edge_moe.runtime.gguf.GgufRunner.format_prompt>`
renders it; the same tokens: ``create_chat_completion`` falls back to another template for a
base model such as Gemma 3 270M, 9 tokens longer), ``temperature=0`` (greedy), ``max_tokens``
and ``stream=True``; ``reset()`` before it, so the repeated prompt is computed again as the
served node's (``prefix_reuse: off``) is. Greedy replies can part from the node's after some
tokens: llama.cpp's numerics differ by batch shape (the node computes a prompt in 128-token
chunks, ``Llama`` in one batch of up to 512).

- **TTFT** ms: the call → the first chunk with text;
- **decode tok/s**: (tokens − 1) / (last chunk with text − first); a chunk with text is one
  generated token in this version's stream (a token that ends inside a UTF-8 character is held
  back and sent with the next: the count is then low, never high);
- **peak RSS** MB: the process's ``VmHWM`` when asked, after its requests.

The one thing done beyond a user's code: this project's llama-cpp-python build keeps ggml's CPU
backends where ggml does not look (:mod:`edge_moe.runtime.gguf_start`), so
:func:`~edge_moe.runtime.gguf_start.start_llama_cpp` loads the variant for this CPU first, as a
stock wheel's built-in backend would be. The wait-policy variables that
:func:`~edge_moe.runtime.gguf_start.import_llama_cpp` sets in the parent are removed from the
child's environment.

Driven through :class:`StockLlama` (JSON lines over the child's stdin and stdout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


class StockLlama:
    """A child process holding ``llama_cpp.Llama`` on ``gguf`` (the module docstring)."""

    def __init__(self, gguf: str | Path, threads: int) -> None:
        from edge_moe.runtime.gguf_start import WAIT_VARS

        env = {k: v for k, v in os.environ.items() if k not in WAIT_VARS}
        self._log = tempfile.TemporaryFile()  # llama.cpp's own lines, shown when the child fails
        self._proc = subprocess.Popen([sys.executable, __file__, str(gguf), str(threads)], cwd=REPO, env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._ask({"op": "ping"})

    def _ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(msg) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            self._log.seek(0)
            raise RuntimeError(f"the stock llama.cpp process ended ({self._proc.wait()}) on {msg['op']}:\n"
                               f"{self._log.read().decode(errors='replace')[-3000:]}")
        return json.loads(line)

    def generate(self, prompt: str, new_tokens: int) -> dict[str, Any]:
        """One streamed greedy completion of ``prompt`` (already in the chat template): ttft_ms,
        decode_tok_s, n_tokens, text and computed_tokens (the prompt's and generated tokens llama.cpp
        computed: all of the prompt, as ``reset()`` drops its prompt cache)."""
        return self._ask({"op": "generate", "prompt": prompt, "new_tokens": new_tokens})

    def peak_rss_mb(self) -> float:
        return float(self._ask({"op": "rss"})["peak_rss_mb"])

    def close(self) -> None:
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
            self._proc.wait(timeout=60)
        self._log.close()


def _serve(gguf: str, threads: int) -> None:
    import llama_cpp

    sys.path.insert(0, str(REPO))
    from edge_moe.runtime.gguf_start import start_llama_cpp

    start_llama_cpp(llama_cpp)
    llm = llama_cpp.Llama(gguf, n_threads=threads, n_threads_batch=threads, verbose=False)
    computed = [0]  # tokens llama.cpp computed (Llama.generate evaluates what its cache lacks)
    evaluate = llm.eval

    def counting_eval(tokens: Any) -> None:
        computed[0] += len(tokens)
        evaluate(tokens)

    llm.eval = counting_eval  # type: ignore[method-assign]
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["op"] == "generate":
            llm.reset()
            computed[0] = 0
            stamps, text = [], []
            t0 = time.perf_counter()
            for chunk in llm.create_completion(msg["prompt"], temperature=0.0, max_tokens=msg["new_tokens"],
                                               stream=True):
                piece = chunk["choices"][0]["text"]
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
            n = len(stamps)
            reply: dict[str, Any] = {"ttft_ms": (stamps[0] - t0) * 1e3 if n else None, "n_tokens": n,
                                     "decode_tok_s": (n - 1) / (stamps[-1] - stamps[0]) if n > 1 else None,
                                     "text": "".join(text), "computed_tokens": computed[0]}
        elif msg["op"] == "rss":
            status = Path("/proc/self/status").read_text()
            reply = {"peak_rss_mb": int(status.split("VmHWM:")[1].split()[0]) / 1024}
        else:
            reply = {"ok": True}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]))
