"""The MLLM's tokens: the local tokenizer of the `tiny` model, and the tokens every tokenizer needs.

`build_tokenizer` trains a byte-level BPE (the `tokenizers` library) on a corpus generated from avgeo's own
vocabulary: prompts in the `avgeo.reasoning.prompt` layout, the 527 AudioSet display names, Natural Earth's
continents and countries and GeoNames' cities of at least a million people (plus every national capital)
from `avgeo.geo.gazetteer`, and responses in `avgeo.reasoning.answer`'s format. Digits are split one per
token before BPE so the model writes coordinates digit by digit; bytes make any other text encodable
without an unknown token. The corpus is a fixed list and BPE breaks ties deterministically, so the same
package data always gives the same tokenizer.

`add_geomllm_tokens` gives any tokenizer (this one, or a real LLaVA-1.5 checkpoint's Llama tokenizer) the
tokens GeoMLLM needs: the response tags as single (non-special, so decoded) tokens, the soft-token
placeholders and LLaVA's `<image>` as special tokens, and a pad token.
"""

from __future__ import annotations

import itertools
import re

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from avgeo.data.audioset import audioset_classes
from avgeo.geo.gazetteer import Gazetteer
from avgeo.reasoning.answer import format_answer
from avgeo.reasoning.prompt import ATOM_TOKEN, FRAME_TOKEN, render_prompt

RESPONSE_TAGS = ("<think>", "</think>", "<answer>", "</answer>")
"""The tags of `avgeo.reasoning.answer`'s response format; each must be one token."""
THINK_CLOSE, ANSWER_CLOSE = RESPONSE_TAGS[1], RESPONSE_TAGS[3]

IMAGE_TOKEN = "<image>"
"""LLaVA's image placeholder; avgeo never sends pixels to LLaVA, but its config needs the token's id."""
PLACEHOLDER_TOKENS = (IMAGE_TOKEN, FRAME_TOKEN, ATOM_TOKEN)

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<s>", "</s>", "<pad>", "<unk>"
"""Llama's spellings, so the local tokenizer and LLaVA-1.5's agree."""

TINY_VOCAB_SIZE = 2048
"""Upper bound of the local tokenizer's vocabulary (BPE stops earlier when the corpus runs out of pairs)."""

_CORPUS_CITY_POPULATION = 1_000_000
_CORPUS_ATOMS_PER_PROMPT = 5
_CORPUS_FRAMES_PER_PROMPT = 4


def build_tokenizer(vocab_size: int = TINY_VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Train the local tokenizer on `tokenizer_corpus()`; it adds `<s>` in front of every encoded text."""
    bpe = Tokenizer(models.BPE())
    # Digits first, one per piece, so no merge can ever join two digits.
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Added tokens are matched whole before BPE runs, so their spellings must not take up merges.
    whole_tokens = re.compile("|".join(map(re.escape, (*RESPONSE_TAGS, *PLACEHOLDER_TOKENS))))
    bpe.train_from_iterator((whole_tokens.sub(" ", text) for text in tokenizer_corpus()), trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", special_tokens=[(BOS_TOKEN, bpe.token_to_id(BOS_TOKEN))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, unk_token=UNK_TOKEN
    )
    add_geomllm_tokens(tokenizer)
    return tokenizer


def add_geomllm_tokens(tokenizer: PreTrainedTokenizerFast) -> int:
    """Add the tokens GeoMLLM needs that `tokenizer` lacks (in place); returns how many were added.

    The model's embedding matrix must then be resized to `len(tokenizer)`.
    """
    added = 0
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    vocabulary = tokenizer.get_vocab()
    added += tokenizer.add_tokens([tag for tag in RESPONSE_TAGS if tag not in vocabulary])
    added += tokenizer.add_tokens(
        [token for token in PLACEHOLDER_TOKENS if token not in vocabulary], special_tokens=True
    )
    return added


def tokenizer_corpus() -> list[str]:
    """The texts the local tokenizer is trained on, in a fixed order."""
    class_names = [audioset_class.name for audioset_class in audioset_classes()]
    gazetteer = Gazetteer.load(min_city_population=_CORPUS_CITY_POPULATION)
    places = [*gazetteer.continents, *gazetteer.countries, *gazetteer.cities()]
    # Strengths cycle through a fixed ladder so numbers of the prompt's form appear without randomness.
    strengths = itertools.cycle([0.93, 0.71, 0.48, 0.26, 0.15, 0.07])
    prompts = [
        render_prompt(
            _CORPUS_FRAMES_PER_PROMPT,
            [(name, next(strengths)) for name in class_names[start : start + _CORPUS_ATOMS_PER_PROMPT]],
        )
        for start in range(0, len(class_names), _CORPUS_ATOMS_PER_PROMPT)
    ]
    responses = [
        format_answer(
            f"I hear {class_names[i % len(class_names)]} and the scene looks like {place.name}, "
            f"{place.country or place.continent}.",
            place.latlon_deg,
        )
        for i, place in enumerate(places)
    ]
    return [*prompts, *class_names, *(place.name for place in places), *responses]
