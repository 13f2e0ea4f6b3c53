"""Stage-1 caption datasets: a VALOR caption list + one media folder -> `[soft tokens] caption\\n`.

See docs/reference/chatbridge.md §2.2 and §4.3.

Each row is `{"video_id": id, "desc" | "caption": str or [str, ...]}`. A list of captions is a set of equally valid
references: training picks one with the sample's generator, evaluation takes the first (the reference crashed on
lists, §7.6). The text is VALOR-normalised and closed by "\\n" (`templates.render_caption`); there is no
instruction in stage 1.

One modality per dataset, as in the reference, where a stage-1 batch never mixed modalities. Image and video
captions use the image queries in the model; that routing is the model's business, not the dataset's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizer

from chatbridge.config import DatasetConfig, Modality
from chatbridge.data.datasets.base import (
    DataContext,
    MediaLoader,
    RowError,
    build_media_loader,
    parse_rows,
    pick_index,
    read_annotation_list,
    row_media_id,
    text_choices,
)
from chatbridge.data.sample import MultimodalSample
from chatbridge.data.templates import render_caption
from chatbridge.data.tokenize import EncodedSample, encode_stage1
from chatbridge.errors import UserError
from chatbridge.registry import DATASETS

CAPTION_KEYS = ("caption", "desc")
"""Row keys that may hold the caption(s); the first one present is used."""


@dataclass(frozen=True)
class CaptionRow:
    """A validated stage-1 row."""

    media_id: str
    captions: tuple[str, ...]


def row_captions(row: Mapping[str, Any]) -> tuple[str, ...]:
    """The caption choices of a row (`caption`, else `desc`); raises RowError("no caption") otherwise."""
    for key in CAPTION_KEYS:
        if key in row:
            return text_choices(row, key, "no caption")
    raise RowError("no caption", f"no {' or '.join(CAPTION_KEYS)}")


def parse_caption_row(row: Any) -> CaptionRow:
    """Validates one stage-1 row; raises RowError naming the problem."""
    media_id = row_media_id(row)
    return CaptionRow(media_id, row_captions(row))


def encode_caption(
    caption: str, num_soft_tokens: int, tokenizer: PreTrainedTokenizer, max_txt_len: int
) -> EncodedSample:
    """`[soft tokens] caption\\n` for the one medium of a stage-1 sample (shared by the JSON and shard sources)."""
    return encode_stage1(render_caption(caption), tokenizer, num_soft_tokens, max_txt_len)


class CaptionSource:
    """Stage-1 captions over a media folder (a `SampleSource`).

    Args:
        name: Dataset name (reported in samples and skip counts).
        rows: Validated rows, in file order.
        media: Loads the one media file of a row.
        context: Tokenizer, query-slot counts and length limit.
        bad_rows: Problem kind -> malformed rows dropped at build time.
    """

    def __init__(
        self,
        name: str,
        rows: Sequence[CaptionRow],
        media: MediaLoader,
        context: DataContext,
        bad_rows: dict[str, int] | None = None,
    ) -> None:
        self.name = name
        self.rows = list(rows)
        self.media = media
        # Plain values only (not the model config), so that a data worker unpickles the source without the models.
        self.tokenizer, self.max_txt_len = context.tokenizer, context.model.max_txt_len
        self.bad_rows = dict(bad_rows or {})
        self.bos_mask_on_padded_rows = False  # stage 1 of the reference padded on the right: BOS always attended

    def __len__(self) -> int:
        return len(self.rows)

    def media_id(self, index: int) -> str:
        """The id of row `index` (for reports and tests)."""
        return self.rows[index].media_id

    def load(self, index: int, train: bool, generator: torch.Generator) -> MultimodalSample:
        """Row `index` -> sample; the caption is drawn before the media, so a seed fixes both.

        Raises:
            MediaError: the media file is missing or unusable.
        """
        row = self.rows[index]
        caption = row.captions[pick_index(len(row.captions), train, generator)]
        media = self.media.load(row.media_id, train, generator)
        encoded = encode_caption(caption, self.media.soft_tokens_of(media)[0], self.tokenizer, self.max_txt_len)
        return MultimodalSample(encoded, media, self.name, index)


def single_modality(name: str, cfg: DatasetConfig) -> Modality:
    """The one modality of a stage-1 dataset; raises ValueError naming the dataset otherwise."""
    if len(cfg.modalities) != 1:
        raise UserError(f"dataset {name}: stage-1 captions take exactly one modality, got {list(cfg.modalities)}")
    if cfg.task != "caption":
        raise UserError(f"dataset {name}: builder {cfg.builder!r} only does task 'caption', got {cfg.task!r}")
    return cfg.modalities[0]


@DATASETS.register("caption_json")
def build_caption_json(name: str, cfg: DatasetConfig, context: DataContext) -> CaptionSource:
    """A VALOR caption file (`cfg.annotations`) over the folder of its one modality."""
    single_modality(name, cfg)
    if cfg.annotations is None:
        raise UserError(f"dataset {name}: annotations (the caption JSON) is required")
    media = build_media_loader(name, cfg, context.model)
    rows, bad_rows = parse_rows(
        cfg.annotations, read_annotation_list(cfg.annotations), parse_caption_row, cfg.skip_bad_rows
    )
    return CaptionSource(name, rows, media, context, bad_rows)
