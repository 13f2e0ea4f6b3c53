"""Token generation from input embeddings: transformers' `generate` with a mask, a KV cache and a per-sequence stop.

What the reference chat lacked and this adds (docs/reference/chatbridge.md §2.4): an attention mask (so left-padded
batches generate what single prompts generate), the stop text checked on every sequence of a batch (not only the
first), greedy and beam search besides sampling, a seed, and a KV cache that a chat can keep across turns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import (
    Cache,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizer,
    StoppingCriteria,
    TextStreamer,
)

from chatbridge.config_apps import GenerationSettings

STOP_WINDOW_TOKENS = 8
"""Tokens at the end of a sequence decoded to look for the stop text (`###` spans at most 3 pieces)."""


@functools.lru_cache(maxsize=8)
def ending_tokens(tokenizer: PreTrainedTokenizer, stop: str) -> Tensor:
    """(V,) True for the ids whose text contains the stop's last character: only they can complete the stop."""
    return torch.tensor([stop[-1] in tokenizer.decode([token]) for token in range(len(tokenizer))])


class StopOnText(StoppingCriteria):
    """Done, per sequence, once the generated text contains `stop` (the reference checked sequence 0 only).

    A sequence's tail is decoded only when its newest token can complete the stop, so the check costs one lookup
    per step for almost every step.
    """

    def __init__(self, tokenizer: PreTrainedTokenizer, stop: str) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.can_end = ending_tokens(tokenizer, stop)

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs: object) -> Tensor:
        done = torch.zeros(len(input_ids), dtype=torch.bool, device=input_ids.device)
        newest = input_ids[:, -1].cpu().clamp(max=len(self.can_end) - 1)
        for row in self.can_end[newest].nonzero().flatten().tolist():
            done[row] = self.stop in self.tokenizer.decode(input_ids[row, -STOP_WINDOW_TOKENS:])
        return done


def cut_at_stop(text: str, stop: str) -> str:
    """The answer: the text before the first stop, stripped."""
    return text.split(stop, 1)[0].strip()


def generation_config(settings: GenerationSettings, tokenizer: PreTrainedTokenizer) -> GenerationConfig:
    """transformers' config for `settings`, independent of whatever the LLM folder's own defaults are."""
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p} if settings.do_sample else {}
    return GenerationConfig(
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        num_beams=settings.num_beams,
        repetition_penalty=settings.repetition_penalty,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=True,
        use_cache=True,
        **sampling,
    )


@dataclass
class Generated:
    """What one `generate_from_embeds` call produced.

    Attributes:
        tokens: (B, n) generated ids only (padded with the pad id after a sequence ended).
        cache: the KV cache after the prompt and all generated tokens but the last (None after beam search, whose
            cache holds beams, not the conversation).
    """

    tokens: Tensor
    cache: Cache | None


def generate_from_embeds(  # noqa: PLR0913 - the prompt, how to generate, and what to reuse or stream to
    llm: PreTrainedModel,
    tokenizer: PreTrainedTokenizer,
    embeds: Tensor,
    attention_mask: Tensor,
    settings: GenerationSettings,
    cache: Cache | None = None,
    streamer: TextStreamer | None = None,
) -> Generated:
    """Generate after `embeds` (B, L, D), left-padded with `attention_mask` (B, L).

    With `cache` (holding the first positions of this very prompt, from an earlier turn), only the positions
    after it are computed. Sampling draws from a generator seeded with `settings.seed`, and the global RNG is left
    as it was.
    """
    devices = [embeds.device] if embeds.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(settings.seed)
        output = llm.generate(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            generation_config=generation_config(settings, tokenizer),
            stopping_criteria=[StopOnText(tokenizer, settings.stop)],
            cache=cache,
            streamer=streamer,
        )
    reusable = output.cache if settings.num_beams == 1 else None
    return Generated(output.sequences, reusable)


class StopFilter:
    """Passes streamed text on until the stop text, holding back a tail that could still be the stop's start.

    So a stream never shows part of the separator, and its pieces join to the answer before stripping.
    """

    def __init__(self, stop: str, emit: Callable[[str], None]) -> None:
        self.stop, self.emit = stop, emit
        self.text, self.shown, self.stopped = "", 0, False

    def feed(self, piece: str) -> None:
        if self.stopped:
            return
        self.text += piece
        end = self.text.find(self.stop)
        self.stopped = end >= 0
        limit = end if self.stopped else len(self.text) - _partial_stop_length(self.text, self.stop)
        if limit > self.shown:
            self.emit(self.text[self.shown : limit])
            self.shown = limit


class CallbackStreamer(TextStreamer):
    """transformers' incremental detokeniser, handing finished text to a `StopFilter` in the generating thread."""

    def __init__(self, tokenizer: PreTrainedTokenizer, text_filter: StopFilter) -> None:
        super().__init__(tokenizer, skip_prompt=False, skip_special_tokens=True)
        self.text_filter = text_filter

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text_filter.feed(text)


def _partial_stop_length(text: str, stop: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `stop`."""
    for length in range(min(len(stop) - 1, len(text)), 0, -1):
        if stop.startswith(text[-length:]):
            return length
    return 0
