"""Tokenisation, soft-token placeholder positions and label masks (spec 2.2, 2.3.2, 2.4).

All string handling happens here, in the data workers, so the model's `forward` sees tensors only. Two steps:

1. `encode_stage1` / `encode_conversation` / `encode_prompt` turn one rendered text into an `EncodedSample`: token
   ids with placeholder slots for the media blocks, labels, and the slots' spans. No BOS, no padding.
2. `collate` pads a list of them into a batch, prepends BOS and flattens the placeholder slots into
   `query_positions` for the model to scatter its projected query tokens into; `query_positions_by_modality`
   regroups those per modality in the `(N, Q)` form `ChatBridgeBatch` takes.

Token ids match the reference only if every segment is encoded on its own with the legacy sentencepiece tokenizer
(`chatbridge.models.llm.load_tokenizer`), because each segment gets its own dummy-prefix "▁".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

import torch
from transformers import PreTrainedTokenizer

from chatbridge.config import Modality
from chatbridge.data.templates import ASSISTANT, QUERY_PLACEHOLDER

IGNORE_INDEX = -100
"""Label of positions without loss (PyTorch cross-entropy's default `ignore_index`)."""
TARGET_START = f"###{ASSISTANT}:"
"""Supervision starts after each occurrence of this ..."""
TARGET_END = "###"
"""... and runs up to and including the next occurrence of this."""


@dataclass(frozen=True)
class EncodedSample:
    """One sample's token sequence before BOS and padding.

    Attributes:
        input_ids: token ids; placeholder slots hold the tokenizer's unk id (the model overwrites their embeddings).
        labels: same length; `IGNORE_INDEX` where there is no loss.
        query_spans: `(start, length)` of each media block's slots, in `<query>` order. After truncation `length`
            may be shorter than the block's query count (only its first `length` soft tokens are kept) or 0 (the
            block was cut away entirely; it stays in the list so block k still means the k-th media block).
    """

    input_ids: list[int]
    labels: list[int]
    query_spans: list[tuple[int, int]]


def encode_stage1(
    caption: str, tokenizer: PreTrainedTokenizer, num_query_tokens: int, max_txt_len: int
) -> EncodedSample:
    """Stage 1: `[queries] [caption tokens]`, with `caption` as rendered by `templates.render_caption`.

    As in the reference, `max_txt_len` limits the caption tokens only (the queries come on top, so at most
    1 + 32 + 32 positions), and every label equal to the pad id is masked: pad is eos, so a genuine "</s>" in a
    caption is unsupervised too.
    """
    text_ids = _encode_text(tokenizer, caption)[:max_txt_len]
    labels = [IGNORE_INDEX if token == tokenizer.pad_token_id else token for token in text_ids]
    return EncodedSample(
        input_ids=[tokenizer.unk_token_id] * num_query_tokens + text_ids,
        labels=[IGNORE_INDEX] * num_query_tokens + labels,
        query_spans=[(0, num_query_tokens)],
    )


def encode_conversation(
    text: str, tokenizer: PreTrainedTokenizer, query_tokens_per_block: Sequence[int], max_txt_len: int
) -> EncodedSample:
    """Stage 2 (`ChatBridge.process_prompt_instruct`): a rendered conversation with one `<query>` per media block.

    The text before each `<query>` is prompt. The text after the last `<query>` is cut after every
    `###Assistant:`; from there up to and including the next `###` is target (so each answer's "\n###" or "###" is
    supervised), the rest is prompt. Every piece is encoded separately. The result is truncated to `max_txt_len`
    positions counting text and query slots, which may cut answers (spec 7.5).
    """
    pieces = _split_media(text, len(query_tokens_per_block))
    ids, labels, spans = _encode_media_pieces(pieces[:-1], tokenizer, query_tokens_per_block)
    for segment, supervised in split_targets(pieces[-1]):
        segment_ids = _encode_text(tokenizer, segment)
        ids += segment_ids
        labels += segment_ids if supervised else [IGNORE_INDEX] * len(segment_ids)
    spans = [(start, max(0, min(length, max_txt_len - start))) for start, length in spans]
    return EncodedSample(ids[:max_txt_len], labels[:max_txt_len], spans)


def encode_prompt(text: str, tokenizer: PreTrainedTokenizer, query_tokens_per_block: Sequence[int]) -> EncodedSample:
    """Inference (demo `Chat`): like `encode_conversation` but the last piece is one unsupervised segment.

    The demo encodes the whole text after the last placeholder at once, answers of earlier turns included, so its
    ids differ from training's after the first turn (spec 2.4); this reproduces the demo. No truncation: the demo
    crops the embedded sequence from the left instead.
    """
    pieces = _split_media(text, len(query_tokens_per_block))
    ids, labels, spans = _encode_media_pieces(pieces[:-1], tokenizer, query_tokens_per_block)
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


def _split_media(text: str, num_blocks: int) -> list[str]:
    """The text pieces around the `<query>` placeholders; there must be one placeholder per media block."""
    pieces = text.split(QUERY_PLACEHOLDER)
    if len(pieces) != num_blocks + 1:
        raise ValueError(f"text has {len(pieces) - 1} {QUERY_PLACEHOLDER} but {num_blocks} media blocks: {text!r}")
    return pieces


def _encode_media_pieces(
    pieces: Sequence[str], tokenizer: PreTrainedTokenizer, query_tokens_per_block: Sequence[int]
) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """Ids, labels (all ignored) and spans of `piece_0 [block_0] piece_1 [block_1] ...`."""
    ids: list[int] = []
    spans = []
    for piece, num_queries in zip(pieces, query_tokens_per_block, strict=True):
        ids += _encode_text(tokenizer, piece)
        spans.append((len(ids), num_queries))
        ids += [tokenizer.unk_token_id] * num_queries
    return ids, [IGNORE_INDEX] * len(ids), spans


class TextBatch(TypedDict):
    """What `collate` returns: B samples, L = 1 + longest sample, K query slots and M media blocks in total.

    To splice, stack the projected queries of all M blocks in batch order as `soft` (M, Q, D), keep
    `soft[torch.arange(Q) < query_block_sizes[:, None]]` (K, D) and write it to
    `embeds.view(B * L, D)[query_positions]`.
    """

    input_ids: torch.Tensor
    """(B, L) int64; BOS at column 0; placeholder slots hold the unk id; padding holds the pad id."""
    attention_mask: torch.Tensor
    """(B, L) int64; 0 on padding (and on BOS of shorter rows under the BOS quirk)."""
    labels: torch.Tensor
    """(B, L) int64; `IGNORE_INDEX` on BOS, padding, query slots and prompt text; unshifted (HF shifts)."""
    query_positions: torch.Tensor
    """(K,) int64 flat indices into the row-major (B*L) sequence, ordered by sample, then block, then slot."""
    query_block_sizes: torch.Tensor
    """(M,) int64 slots kept per block, same order, summing to K: the block's query count (e.g. 32), or fewer if
    truncation cut the block (then its first `size` soft tokens are used), or 0 if it was cut away."""
    query_blocks_per_sample: torch.Tensor
    """(B,) int64 media blocks per sample (blocks are in `<query>` order within a sample), to map blocks to rows."""


def collate(
    samples: Sequence[EncodedSample],
    pad_id: int,
    padding_side: Literal["left", "right"],
    bos_id: int,
    bos_mask_on_padded_rows: bool,
) -> TextBatch:
    """Pad encoded samples into a `TextBatch` with BOS at column 0.

    Stage 1 pads on the right (`[BOS] [content] [pad]`), stage 2 on the left (`[BOS] [pad] [content]`). Padding gets
    `pad_id`, attention 0 and label `IGNORE_INDEX` (the reference padded stage 2 with zero embeddings; both are
    masked, so the loss is the same). BOS gets label `IGNORE_INDEX` and attention 1, unless
    `bos_mask_on_padded_rows`: then BOS copies the attention of the first content column, which under left padding
    masks BOS on every row shorter than the longest (the reference's stage-2 quirk, spec 2.3.2 step 5).
    """
    starts = _content_starts(samples, padding_side)
    content_len = max(len(sample.input_ids) for sample in samples)
    width = 1 + content_len
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    positions: list[int] = []
    for row, (sample, start) in enumerate(zip(samples, starts, strict=True)):
        end = start + len(sample.input_ids)
        input_ids[row, start:end] = torch.tensor(sample.input_ids, dtype=torch.long)
        labels[row, start:end] = torch.tensor(sample.labels, dtype=torch.long)
        attention_mask[row, start:end] = 1
        for span_start, length in sample.query_spans:
            first = row * width + start + span_start
            positions.extend(range(first, first + length))
    input_ids[:, 0] = bos_id
    attention_mask[:, 0] = attention_mask[:, 1] if bos_mask_on_padded_rows and content_len > 0 else 1
    return TextBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        query_positions=torch.tensor(positions, dtype=torch.long),
        query_block_sizes=torch.tensor([n for s in samples for _, n in s.query_spans], dtype=torch.long),
        query_blocks_per_sample=torch.tensor([len(s.query_spans) for s in samples], dtype=torch.long),
    )


def _content_starts(samples: Sequence[EncodedSample], padding_side: str) -> list[int]:
    """Column where each sample's content starts: right after BOS, or after BOS and the left padding."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not samples:
        raise ValueError("collate needs at least one sample")
    content_len = max(len(sample.input_ids) for sample in samples)
    return [1 + (content_len - len(sample.input_ids) if padding_side == "left" else 0) for sample in samples]


def query_positions_by_modality(
    batch: TextBatch, modalities: Sequence[Sequence[Modality]]
) -> dict[Modality, torch.Tensor]:
    """Group `batch["query_positions"]` per modality, as `ChatBridgeBatch.query_positions` expects.

    Args:
        batch: the output of `collate`.
        modalities: per sample, the modality of each media block in `<query>` order (the template's tuple).

    Returns:
        modality -> (N, Q) int64 positions of that modality's N blocks, in batch order (sample, then block), which
        is the order the media of that modality must be stacked in.

    Raises:
        ValueError: the block counts disagree with `modalities`, or truncation cut a media block (the model needs
            all Q slots of every block; raise `model.max_txt_len`).
    """
    block_modalities = [modality for sample in modalities for modality in sample]
    if [len(sample) for sample in modalities] != batch["query_blocks_per_sample"].tolist():
        raise ValueError(f"media blocks per sample {batch['query_blocks_per_sample'].tolist()} != {modalities}")
    sizes = batch["query_block_sizes"].tolist()
    grouped: dict[Modality, list[torch.Tensor]] = {}
    for modality, block in zip(block_modalities, batch["query_positions"].split(sizes), strict=True):
        grouped.setdefault(modality, []).append(block)
    for modality, blocks in grouped.items():
        if len({len(block) for block in blocks}) > 1:
            raise ValueError(f"{modality} blocks of unequal size {sizes}: truncation cut one; raise model.max_txt_len")
    return {modality: torch.stack(blocks) for modality, blocks in grouped.items()}
