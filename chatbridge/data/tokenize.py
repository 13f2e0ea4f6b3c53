"""Text -> token ids, soft-token slots and label masks (docs/reference/chatbridge.md §2.2, §2.3.2, §2.4).

All string handling happens here, in the data workers, so the model's `forward` sees tensors only:
`encode_stage1` / `encode_conversation` / `encode_prompt` turn one rendered text into an `EncodedSample` (token ids
with slots for each medium's soft tokens, labels, and where the slots start); `collate.collate` pads samples into a
batch. No BOS, no padding here.

Token ids match the reference only if every segment is encoded on its own with the legacy sentencepiece tokenizer
(`chatbridge.models.llm.load_tokenizer`), because each segment gets its own dummy-prefix "▁".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizer

from chatbridge.data.batch import IGNORE_INDEX
from chatbridge.data.templates import ASSISTANT, QUERY_PLACEHOLDER

TARGET_START = f"###{ASSISTANT}:"
"""Supervision starts after each occurrence of this ..."""
TARGET_END = "###"
"""... and runs up to and including the next occurrence of this."""


@dataclass(frozen=True)
class EncodedSample:
    """One sample's token sequence before BOS and padding.

    Attributes:
        input_ids: token ids; soft-token slots hold the tokenizer's unk id (the model overwrites their embeddings).
        labels: same length; `IGNORE_INDEX` where there is no loss.
        media_spans: (start, length) of each medium's soft-token slots, in `<query>` order.
    """

    input_ids: list[int]
    labels: list[int]
    media_spans: list[tuple[int, int]]


def encode_stage1(
    caption: str, tokenizer: PreTrainedTokenizer, num_soft_tokens: int, max_txt_len: int
) -> EncodedSample:
    """Stage 1: `[soft tokens] [caption tokens]`, with `caption` as rendered by `templates.render_caption`.

    As in the reference, `max_txt_len` limits the caption tokens only (the soft tokens come on top, so at most
    1 + 32 + 32 positions), and every label equal to the pad id is masked: pad is eos, so a genuine "</s>" in a
    caption is unsupervised too.
    """
    text_ids = _encode_text(tokenizer, caption)[:max_txt_len]
    labels = [IGNORE_INDEX if token == tokenizer.pad_token_id else token for token in text_ids]
    return EncodedSample(
        input_ids=[tokenizer.unk_token_id] * num_soft_tokens + text_ids,
        labels=[IGNORE_INDEX] * num_soft_tokens + labels,
        media_spans=[(0, num_soft_tokens)],
    )


def encode_conversation(
    text: str, tokenizer: PreTrainedTokenizer, soft_tokens_per_medium: Sequence[int], max_txt_len: int
) -> EncodedSample:
    """Stage 2 (`ChatBridge.process_prompt_instruct`): a rendered conversation with one `<query>` per medium.

    The text before each `<query>` is prompt. The text after the last `<query>` is cut after every
    `###Assistant:`; from there up to and including the next `###` is target (so each answer's "\n###" or "###" is
    supervised), the rest is prompt. Every piece is encoded separately. The result is truncated to `max_txt_len`
    positions counting text and soft tokens, which may cut answers (docs/reference/chatbridge.md §7.5).

    Raises:
        ValueError: the truncation would cut a medium's soft tokens (raise `model.max_txt_len`).
    """
    pieces = _split_media(text, len(soft_tokens_per_medium))
    ids, labels, spans = _encode_media_pieces(pieces[:-1], tokenizer, soft_tokens_per_medium)
    for segment, supervised in split_targets(pieces[-1]):
        segment_ids = _encode_text(tokenizer, segment)
        ids += segment_ids
        labels += segment_ids if supervised else [IGNORE_INDEX] * len(segment_ids)
    if spans and sum(spans[-1]) > max_txt_len:
        raise ValueError(
            f"model.max_txt_len = {max_txt_len} cuts a medium's soft tokens (the last ends at position "
            f"{sum(spans[-1])}); raise model.max_txt_len"
        )
    return EncodedSample(ids[:max_txt_len], labels[:max_txt_len], spans)


def encode_prompt(text: str, tokenizer: PreTrainedTokenizer, soft_tokens_per_medium: Sequence[int]) -> EncodedSample:
    """Inference (demo `Chat`): like `encode_conversation` but the last piece is one unsupervised segment.

    The demo encodes the whole text after the last placeholder at once, answers of earlier turns included, so its
    ids differ from training's after the first turn (§2.4); this reproduces the demo. No truncation here.
    """
    pieces = _split_media(text, len(soft_tokens_per_medium))
    ids, labels, spans = _encode_media_pieces(pieces[:-1], tokenizer, soft_tokens_per_medium)
    last_ids = _encode_text(tokenizer, pieces[-1])
    return EncodedSample(ids + last_ids, labels + [IGNORE_INDEX] * len(last_ids), spans)


def split_targets(text: str) -> list[tuple[str, bool]]:
    """Cut the text after the last media block into `(segment, supervised)` pieces, as the reference did.

    An `###Assistant:` with no `###` after it ends the walk: the rest is prompt (this is the inference case).
    """
    segments = []
    while TARGET_START in text:
        cut = text.find(TARGET_START) + len(TARGET_START)
        prompt, text = text[:cut], text[cut:]
        segments.append((prompt, False))
        end = text.find(TARGET_END)
        if end < 0:
            break
        end += len(TARGET_END)
        segments.append((text[:end], True))
        text = text[end:]
    if text:
        segments.append((text, False))
    return segments


def _encode_text(tokenizer: PreTrainedTokenizer, text: str) -> list[int]:
    """One segment, no BOS/EOS; the segment boundary is where sentencepiece restarts with a dummy prefix."""
    return tokenizer.encode(text, add_special_tokens=False)


def _split_media(text: str, num_media: int) -> list[str]:
    """The text pieces around the `<query>` placeholders; there must be one placeholder per medium."""
    pieces = text.split(QUERY_PLACEHOLDER)
    if len(pieces) != num_media + 1:
        raise ValueError(f"text has {len(pieces) - 1} {QUERY_PLACEHOLDER} but {num_media} media: {text!r}")
    return pieces


def _encode_media_pieces(
    pieces: Sequence[str], tokenizer: PreTrainedTokenizer, soft_tokens_per_medium: Sequence[int]
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Ids, labels (all ignored) and slot spans of `piece_0 [medium_0] piece_1 [medium_1] ...`."""
    ids: list[int] = []
    spans = []
    for piece, count in zip(pieces, soft_tokens_per_medium, strict=True):
        ids += _encode_text(tokenizer, piece)
        spans.append((len(ids), count))
        ids += [tokenizer.unk_token_id] * count
    return ids, [IGNORE_INDEX] * len(ids), spans
