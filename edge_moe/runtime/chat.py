"""Single-turn chat formatting from an artifact's manifest, without Jinja.

At export time the model's own chat template is rendered once around a sentinel user
message (with the generation prompt); the text before and after it is stored in the
manifest as ``chat_prefix`` and ``chat_suffix``. Formatting a prompt is then a string
concatenation that matches ``tokenizer.apply_chat_template`` exactly for one user turn,
for every template we ship (ChatML for SmolLM2 and Qwen2.5; base Gemma has none).
"""

from __future__ import annotations

from edge_moe.errors import RunnerError
from edge_moe.runtime.manifest import Manifest


def has_chat(manifest: Manifest) -> bool:
    """True when the artifact carries a rendered chat template."""
    return manifest.chat_prefix is not None and manifest.chat_suffix is not None


def format_chat(manifest: Manifest, user_message: str) -> str:
    """Wrap one user message in the model's chat template, ready for generation.

    Raises:
        RunnerError: the model has no chat template (a base model).
    """
    if not has_chat(manifest):
        raise RunnerError(
            f"{manifest.name} has no chat template (a base model); call with chat=False"
        )
    return f"{manifest.chat_prefix}{user_message}{manifest.chat_suffix}"
