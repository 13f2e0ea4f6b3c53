"""Samples -> one left-padded `ChatBridgeBatch`, with each modality's soft-token positions (§2.2, §2.3.2).

One layout for both stages: `[BOS] [padding] [content]`. Stage 1 of the reference padded on the right; the model
computes position ids from the attention mask, so left and right padding give the same loss, and one layout also
suits generation, which needs the prompt to end at the last column.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from chatbridge.data.batch import IGNORE_INDEX, ChatBridgeBatch
from chatbridge.data.sample import MultimodalSample


def collate(
    samples: Sequence[MultimodalSample], pad_id: int, bos_id: int, bos_mask_on_padded_rows: bool = False
) -> ChatBridgeBatch:
    """Pad, prepend BOS and group media and slot positions per modality (sample by sample, placeholder by
    placeholder, so the k-th block of a modality fills the k-th row of its positions).

    Padding gets `pad_id`, attention 0 and label `IGNORE_INDEX` (the reference padded stage 2 with zero
    embeddings; both are masked, so the loss is the same). BOS gets label `IGNORE_INDEX` and attention 1, unless
    `bos_mask_on_padded_rows`: then BOS copies the attention of the first content column, which masks BOS on every
    row shorter than the longest (the reference's stage-2 quirk, §2.3.2 step 5).

    Raises:
        ValueError: no samples; a sample whose media and placeholders disagree; blocks of one modality with
            different shapes; a modality both cached and not in one batch (each names the samples).
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    width = 1 + max(len(sample.encoded.input_ids) for sample in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    blocks: dict[str, list[tuple[MultimodalSample, Tensor, bool, Tensor]]] = {}
    for row, sample in enumerate(samples):
        encoded = sample.encoded
        start = width - len(encoded.input_ids)
        input_ids[row, start:] = torch.tensor(encoded.input_ids, dtype=torch.long)
        labels[row, start:] = torch.tensor(encoded.labels, dtype=torch.long)
        attention_mask[row, start:] = 1
        if len(encoded.media_spans) != len(sample.media):
            raise ValueError(
                f"{sample.source}[{sample.index}]: {len(sample.media)} media but "
                f"{len(encoded.media_spans)} placeholders"
            )
        for medium, (slot, length) in zip(sample.media, encoded.media_spans, strict=True):
            positions = torch.arange(length) + row * width + start + slot
            blocks.setdefault(medium.modality, []).append((sample, medium.tensor, medium.cached, positions))
    input_ids[:, 0] = bos_id
    attention_mask[:, 0] = attention_mask[:, 1] if bos_mask_on_padded_rows and width > 1 else 1
    batch = ChatBridgeBatch(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
    for modality, entries in blocks.items():
        _add_modality(batch, modality, entries)
    return batch


def _add_modality(
    batch: ChatBridgeBatch, modality: str, entries: list[tuple[MultimodalSample, Tensor, bool, Tensor]]
) -> None:
    first_sample, first, first_cached, _ = entries[0]
    for sample, tensor, cached, _ in entries[1:]:
        where = f"({first_sample.source}[{first_sample.index}] vs {sample.source}[{sample.index}])"
        if tensor.shape != first.shape:
            raise ValueError(
                f"{modality} media of different shapes in one batch: {tuple(first.shape)} vs {tuple(tensor.shape)} "
                f"{where}; make the datasets' processor settings agree"
            )
        if cached != first_cached:
            raise ValueError(f"{modality} media both cached and not in one batch {where}")
    stacked = torch.stack([tensor for _, tensor, _, _ in entries])
    (batch.features if first_cached else batch.media)[modality] = stacked
    batch.soft_token_positions[modality] = torch.stack([positions for _, _, _, positions in entries])
