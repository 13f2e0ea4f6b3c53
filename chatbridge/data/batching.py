"""Model-ready samples -> one `ChatBridgeBatch`: padded text, placeholder positions and media stacked per modality.

The text side is `collate.collate` (padding, BOS, flat placeholder positions) and
`collate.query_positions_by_modality` (positions regrouped per modality, block by block). This module adds the
media side in exactly the order those positions use: sample by sample, and within a sample block by block, so
the k-th row of `media[m]` fills the k-th row of `query_positions[m]`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Literal

import torch
from torch import Tensor
from transformers import PreTrainedTokenizer

from chatbridge.data.collate import collate, query_positions_by_modality
from chatbridge.data.datasets.base import MultimodalSample
from chatbridge.models.chatbridge import ChatBridgeBatch


def stack_media(samples: Sequence[MultimodalSample]) -> dict[str, Tensor]:
    """Media per modality in block order: image (N, 3, H, W), video (N, T, 3, H, W), audio (N, S, T, F).

    Raises:
        ValueError: two blocks of one modality differ in shape (e.g. datasets with different `num_frames` or
            `image_size` in one batch); names the samples.
    """
    grouped: dict[str, list[tuple[MultimodalSample, Tensor]]] = {}
    for sample in samples:
        for modality, tensor in sample.media:
            grouped.setdefault(modality, []).append((sample, tensor))
    stacked = {}
    for modality, blocks in grouped.items():
        first_sample, first = blocks[0]
        for sample, tensor in blocks[1:]:
            if tensor.shape != first.shape:
                raise ValueError(
                    f"{modality} media of different shapes in one batch: {tuple(first.shape)} "
                    f"({first_sample.source}[{first_sample.index}]) vs {tuple(tensor.shape)} "
                    f"({sample.source}[{sample.index}]); make the datasets' processor settings agree"
                )
        stacked[modality] = torch.stack([tensor for _, tensor in blocks])
    return stacked


def batch_samples(
    samples: Sequence[MultimodalSample],
    tokenizer: PreTrainedTokenizer,
    padding_side: Literal["left", "right"],
    bos_mask_on_padded_rows: bool,
    feature_modalities: Collection[str] = (),
) -> ChatBridgeBatch:
    """Pads and stacks samples into the model's input.

    Args:
        samples: Loaded samples (any mix of datasets, as long as each modality's media share one shape).
        tokenizer: Supplies the pad and BOS ids.
        padding_side: "right" for stage 1, "left" for stage 2 (as the reference).
        bos_mask_on_padded_rows: The reference's stage-2 BOS quirk (`FaithfulConfig`).
        feature_modalities: Modalities whose blocks are cached tower features (S, L, D), not pixels
            (`chatbridge.data.feature_cache`); they go to `ChatBridgeBatch.features`.

    Raises:
        ValueError: media shapes disagree within a modality, a sample's media count differs from its `<query>`
            blocks, or truncation cut a media block.
    """
    for sample in samples:
        if len(sample.media) != len(sample.encoded.query_spans):
            raise ValueError(
                f"{sample.source}[{sample.index}]: {len(sample.media)} media but "
                f"{len(sample.encoded.query_spans)} placeholder blocks"
            )
    text = collate(
        [sample.encoded for sample in samples],
        pad_id=tokenizer.pad_token_id,
        padding_side=padding_side,
        bos_id=tokenizer.bos_token_id,
        bos_mask_on_padded_rows=bos_mask_on_padded_rows,
    )
    modalities = [[modality for modality, _ in sample.media] for sample in samples]
    blocks = stack_media(samples)
    return ChatBridgeBatch(
        input_ids=text["input_ids"],
        attention_mask=text["attention_mask"],
        labels=text["labels"],
        media={m: stacked for m, stacked in blocks.items() if m not in feature_modalities},
        query_positions=query_positions_by_modality(text, modalities),
        features={m: stacked for m, stacked in blocks.items() if m in feature_modalities},
    )
