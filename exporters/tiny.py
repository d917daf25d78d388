"""Tiny random-weight checkpoints built from a config, with no download.

Tests and smoke runs export these through the same path as real models: a Llama, a
Qwen2 and a Gemma3 (with sliding-window layers) decoder, and a word-level tokenizer
("w3 w4 …") whose ids equal the word numbers; ids 0-2 and the last two are special.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge_moe.errors import ConfigError

ARCHS = ("llama", "qwen2", "gemma3")
VOCAB = 128
EOS_ID = 1
BOS_ID = 2
# ChatML, like SmolLM2's and Qwen2.5's templates, without a default system turn.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _config(arch: str, max_context: int, head_dim: int | None = None) -> object:
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common: dict[str, Any] = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_context,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        pad_token_id=0,
    )
    if head_dim is not None and arch != "gemma3":
        # wider heads (e.g. 16: onnxruntime's GroupQueryAttention needs a multiple of 16)
        common.update(hidden_size=4 * head_dim, head_dim=head_dim)
    if arch == "llama":
        return LlamaConfig(num_hidden_layers=2, **common)
    if arch == "qwen2":
        return Qwen2Config(num_hidden_layers=2, **common)
    if arch == "gemma3":
        return Gemma3TextConfig(
            num_hidden_layers=3,
            head_dim=16,
            sliding_window=4,  # shorter than the test prompts, so the window matters
            layer_types=["sliding_attention", "sliding_attention", "full_attention"],
            **{**common, "num_key_value_heads": 1},
        )
    raise ConfigError(f"unknown tiny architecture {arch!r}; choose one of {list(ARCHS)}")


def make_tiny_checkpoint(
    arch: str, out_dir: str | Path, *, seed: int = 0, max_context: int = 64,
    head_dim: int | None = None,
) -> Path:
    """Write a tiny random ``arch`` causal LM and its tokenizer to ``out_dir``.

    Args:
        arch: ``llama``, ``qwen2`` or ``gemma3``.
        out_dir: the checkpoint folder (created).
        seed: torch seed of the random weights.
        max_context: the model's max_position_embeddings (its context).
        head_dim: attention head size for llama/qwen2 (default 8; gemma3 has 16).

    Returns:
        ``out_dir``.

    Raises:
        ConfigError: unknown ``arch``.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    cfg = _config(arch, max_context, head_dim)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    vocab = {f"w{i}": i for i in range(VOCAB)}
    for i in (0, EOS_ID, BOS_ID, VOCAB - 2, VOCAB - 1):  # special ids get their own names
        del vocab[f"w{i}"]
    vocab.update(
        {
            "<unk>": 0,
            "</s>": EOS_ID,
            "<s>": BOS_ID,
            "<|im_start|>": VOCAB - 2,
            "<|im_end|>": VOCAB - 1,
        }
    )
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="<unk>",
        eos_token="</s>",
        bos_token="<s>",
        pad_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    return out
