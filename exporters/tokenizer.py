"""The tokenizer of an artifact: ``tokenizer.json`` true to transformers, and its manifest facts.

Runners tokenise with the `tokenizers` library alone (no transformers on the serving
path), so the exporter writes the checkpoint's fast tokenizer as ``tokenizer.json`` and
checks on probe texts that it tokenises exactly like transformers. The manifest also
gets the special tokens and the chat template pre-rendered around one user message
(``chat_prefix`` / ``chat_suffix``), so runners format single-turn chats without Jinja.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from edge_moe.errors import ArtifactError

logger = logging.getLogger(__name__)

TOKENIZER_FILE = "tokenizer.json"
_CHAT_SENTINEL = "\x00EDGE_MOE_USER_MESSAGE\x00"
_TOKENIZER_PROBES = (
    "The capital of France is",
    "Answer: A B C D",
    "  leading spaces, ünïcödé and numbers 12345.\nnew line",
)


def load_tokenizer(hf_dir: Path) -> Any:
    """The checkpoint's transformers tokenizer, true to its tokenizer.json.

    transformers 5 picks the tokenizer class from the model type, and for some types
    (Qwen2) rebuilds it from vocab files a custom tokenizer.json does not have. When the
    result disagrees with the folder's tokenizer.json, the generic fast class is used.
    """
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = AutoTokenizer.from_pretrained(hf_dir)
    path = Path(hf_dir) / TOKENIZER_FILE
    if path.is_file():
        ref = Tokenizer.from_file(str(path))
        if any(list(tok(t)["input_ids"]) != ref.encode(t).ids for t in _TOKENIZER_PROBES):
            logger.info(
                "%s: %s disagrees with tokenizer.json; using the generic fast class",
                hf_dir,
                type(tok).__name__,
            )
            tok = PreTrainedTokenizerFast.from_pretrained(hf_dir)
    return tok


def save_tokenizer(tok: Any, out_dir: Path) -> Path:
    """Write tokenizer.json and check it tokenises like transformers does.

    Raises:
        ArtifactError: the tokenizer is not a fast one, or the `tokenizers` file
            disagrees with transformers on a probe text.
    """
    from tokenizers import Tokenizer

    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ArtifactError(f"{type(tok).__name__} has no fast tokenizer to save")
    path = out_dir / TOKENIZER_FILE
    # Padding and truncation are request settings for the runner, not part of the file.
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_padding()
    plain.no_truncation()
    plain.save(str(path))
    reloaded = Tokenizer.from_file(str(path))
    for text in _TOKENIZER_PROBES:
        want = tok(text)["input_ids"]
        got = reloaded.encode(text).ids
        if not want:
            raise ArtifactError(f"the tokenizer maps {text!r} to no tokens")
        if list(want) != list(got):
            raise ArtifactError(
                f"tokenizer.json disagrees with transformers on {text!r}: {got[:12]} vs {want[:12]}"
            )
    return path


def chat_parts(tok: Any) -> tuple[str | None, str | None, str | None]:
    """The chat template and its rendering around one user message: (template, prefix,
    suffix), all None for a tokenizer without a template.

    Raises:
        ArtifactError: the template does not render the user message exactly once.
    """
    template = getattr(tok, "chat_template", None)
    if not template:
        return None, None, None
    rendered = tok.apply_chat_template(
        [{"role": "user", "content": _CHAT_SENTINEL}], tokenize=False, add_generation_prompt=True
    )
    if rendered.count(_CHAT_SENTINEL) != 1:
        raise ArtifactError("chat template does not render the user message exactly once")
    prefix, suffix = rendered.split(_CHAT_SENTINEL)
    return template, prefix, suffix


def special_tokens(tok: Any, model: Any) -> dict[str, Any]:
    """The manifest's ``special_tokens``: every end-of-sequence id the generation config,
    the tokenizer or the model config names (in that order, once each), and BOS / pad."""
    eos: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for cand in (gen_eos, tok.eos_token_id, getattr(model.config, "eos_token_id", None)):
        for t in cand if isinstance(cand, (list, tuple)) else [cand]:
            if t is not None and int(t) not in eos:
                eos.append(int(t))
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_ids": eos,
        "pad_token_id": tok.pad_token_id,
        "eos_token": tok.eos_token,
        "bos_token": tok.bos_token,
    }
