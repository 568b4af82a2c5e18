"""LLaVA checkpoints for GeoMLLM: `tiny` is LLaVA-1.5's architecture built small, seeded and saved locally.

The `tiny` directory is laid out as `llava-hf/llava-1.5-7b-hf` is (a `LlavaForConditionalGeneration` with
`save_pretrained`'s config and safetensors, plus the tokenizer's files), so `GeoMLLM.from_pretrained`
reads both through the same code. Its tokenizer is `avgeo.reasoning.tokenizer.build_tokenizer()`; its
weights are random from `avgeo.perception.checkpoints.TINY_SEED`. It is built on first use under
`avgeo.perception.checkpoints.cache_root()`, in a directory named by a hash of the recipe below.
"""

from __future__ import annotations

from pathlib import Path

from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    PreTrainedTokenizerFast,
)

from avgeo.perception.checkpoints import TinyRecipe, resolve_checkpoint
from avgeo.reasoning.answer import format_answer
from avgeo.reasoning.prompt import render_prompt
from avgeo.reasoning.tokenizer import IMAGE_TOKEN, TINY_VOCAB_SIZE, build_tokenizer

TINY_VISION_CONFIG = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 16,
}
"""`CLIPVisionConfig` arguments of the tiny LLaVA's vision tower (unused by GeoMLLM, kept for the layout)."""

TINY_TEXT_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "max_position_embeddings": 1024,
}
"""`LlamaConfig` arguments of the tiny LLaVA's language model (the vocabulary comes from the tokenizer)."""


def tiny_llava(tokenizer: PreTrainedTokenizerFast) -> LlavaForConditionalGeneration:
    """A randomly initialised LLaVA of the tiny sizes over `tokenizer`'s vocabulary (seed torch first)."""
    text_config = LlamaConfig(
        **TINY_TEXT_CONFIG,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision_config = CLIPVisionConfig(**TINY_VISION_CONFIG)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(vision_config.image_size // vision_config.patch_size) ** 2,
    )
    return LlavaForConditionalGeneration(config).eval()


def resolve_llava(name_or_dir: str | Path) -> str:
    """`tiny` -> its local directory (built on first use); any other directory or hub id unchanged."""
    return resolve_checkpoint(name_or_dir, _TINY_RECIPE)


def _save_tiny(directory: Path) -> None:
    tokenizer = build_tokenizer(TINY_VOCAB_SIZE)
    tiny_llava(tokenizer).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


_TINY_RECIPE = TinyRecipe(
    kind="llava",
    spec={
        "vision": TINY_VISION_CONFIG,
        "text": TINY_TEXT_CONFIG,
        "vocab_size": TINY_VOCAB_SIZE,
        # The tokenizer is trained on prompts and responses: a change to either makes a new tokenizer.
        "prompt": render_prompt(1, [("Speech", 1.0)]),
        "response": format_answer("trace", (1.0, -1.0)),
    },
    build=_save_tiny,
)
