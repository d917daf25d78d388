"""The sentence-encoder runner: MiniLM-style artifacts with pooling and L2 norm inside the graph.

numpy, onnxruntime and `tokenizers` only (never torch or transformers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_moe.errors import ArtifactError, RunnerError
from edge_moe.runtime.manifest import load_manifest
from edge_moe.runtime.session import load_tokenizer, make_session


class EncoderRunner:
    """A sentence-encoder artifact (pooling and L2 norm inside the graph).

    Raises:
        ArtifactError: missing or malformed artifact, or not an encoder.
        RunnerError: a requested provider is not available.
    """

    def __init__(
        self,
        artifact_dir: str | Path,
        *,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        intra_op_threads: int | None = None,
        inter_op_threads: int = 1,
    ) -> None:
        self.artifact_dir = Path(artifact_dir)
        self.manifest = load_manifest(self.artifact_dir)
        m = self.manifest
        if m.kind != "encoder" or m.encoder is None:
            raise ArtifactError(
                f"{self.artifact_dir}: kind={m.kind!r}, EncoderRunner needs an encoder"
            )
        self.session = make_session(
            self.artifact_dir / m.model_file, providers, intra_op_threads, inter_op_threads
        )
        self.tokenizer = load_tokenizer(self.artifact_dir, m)
        self.max_length = int(m.encoder["max_length"])
        self.tokenizer.enable_truncation(self.max_length)
        pad_id = int(m.special_tokens.get("pad_token_id") or 0)
        self.tokenizer.enable_padding(pad_id=pad_id)
        self._inputs = [i.name for i in self.session.get_inputs()]
        self.dim = int(m.encoder["embedding_dim"])

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Unit-norm embeddings, (N, dim) float32.

        Raises:
            RunnerError: ``texts`` is empty or a plain string.
        """
        if isinstance(texts, str) or len(texts) == 0:
            raise RunnerError("texts must be a non-empty list of strings")
        out = []
        for s in range(0, len(texts), batch_size):
            enc = self.tokenizer.encode_batch(list(texts[s : s + batch_size]))
            arrays = {
                "input_ids": np.array([e.ids for e in enc], np.int64),
                "attention_mask": np.array([e.attention_mask for e in enc], np.int64),
                "token_type_ids": np.array([e.type_ids for e in enc], np.int64),
            }
            feed = {k: v for k, v in arrays.items() if k in self._inputs}
            out.append(self.session.run(None, feed)[0])
        return np.concatenate(out).astype(np.float32, copy=False)
