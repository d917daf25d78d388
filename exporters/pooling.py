"""The sentence encoder in torch: a BERT with mean pooling and L2 normalisation on top.

This equals sentence-transformers' all-MiniLM-L6-v2 (Transformer → mean Pooling →
Normalize) without sentence-transformers. It is both what :mod:`exporters.encoder`
traces into the graph and the reference :func:`exporters.parity.check_encoder_parity`
compares the graph with.
"""

from __future__ import annotations

from typing import Any

MAX_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2


def pooled(model: Any) -> Any:
    """An nn.Module ``(input_ids, attention_mask, token_type_ids) -> (B, D)`` unit vectors
    around a transformers encoder."""
    import torch

    class MeanPoolNormalize(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
            h = self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state  # (B, T, D)
            m = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            mean = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, D)
            return torch.nn.functional.normalize(mean, p=2.0, dim=-1)  # (B, D)

    return MeanPoolNormalize().eval()


def embed_torch(model: Any, tok: Any, texts: list[str]) -> Any:
    """Reference embeddings (N, D) with torch + transformers (no sentence-transformers)."""
    import torch

    b = tok(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    with torch.no_grad():
        return pooled(model)(b["input_ids"], b["attention_mask"], b["token_type_ids"]).numpy()
