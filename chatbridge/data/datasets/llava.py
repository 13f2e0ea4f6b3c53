"""LLaVA-format conversation datasets, ChatBind's training data (docs/reference/chatbind.md §5).

One builder, `llava_json`, reads both of ChatBind's files: stage-1 pretraining `chat.json` (CC3M-595K, or LCS-558K's
`blip_laion_cc_sbu_558k.json`: one instruction + caption exchange per image) and stage-2 `llava_instruct_150k.json`
(multi-turn). A row is

    {"id": ..., "image": "000000033471.jpg", "conversations": [{"from": "human", "value": "<image>\\nWhat ..."},
                                                               {"from": "gpt", "value": "..."}, ...]}

The media file comes from the key named like the dataset's first modality (`image`; our extension also reads
`video` and `audio` rows), relative to that modality's root; further modalities load the same id (as in MULTIS,
`[video, audio]` is a video and its sound track). Each modality's tag (`<image>`, `<video>`, `<audio>`) must occur
exactly once, in the order of `modalities`, and marks where the medium goes. The LLaVA version (v0 or v1: text,
tokenisation and label masking) is the model's chat template (`model.chat_template`), so training samples tokenise
exactly as chat prompts do. Unlike the reference, file names are used as given: no `COCO_train2014_` prefix is
added (§5), so point `image_root` at COCO train2017, whose files carry the bare ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
    read_annotation_list,
)
from chatbridge.data.llava_tokenize import encode_llava_v0, encode_llava_v1, media_token_id
from chatbridge.data.sample import MultimodalSample
from chatbridge.data.templates import IM_END, IM_PATCH, IM_START, LLAVA_MEDIA_TAGS, QUERY_PLACEHOLDER
from chatbridge.data.tokenize import EncodedSample
from chatbridge.registry import DATASETS

Encoder = Callable[[Sequence[Mapping[str, str]], PreTrainedTokenizer, Sequence[int], int], EncodedSample]
LLAVA_VERSIONS: dict[str, Encoder] = {"llava_v0": encode_llava_v0, "llava_v1": encode_llava_v1}
"""Chat templates a LLaVA dataset can train with, and the tokenisation and masking of each."""
ROLES = ("human", "gpt")


@dataclass(frozen=True)
class LlavaRow:
    """A validated row: the media id and the messages, each medium's tag replaced by `<query>`."""

    media_id: str
    conversation: tuple[Mapping[str, str], ...]


def parse_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """`conversations` as alternating human/gpt messages starting with human (what the v1 template asserts)."""
    messages = row.get("conversations")
    if not isinstance(messages, list) or not messages:
        raise RowError("bad conversation", "conversations must be a non-empty list")
    for number, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("value"), str):
            raise RowError("bad conversation", f"message {number} needs a string 'value'")
        if message.get("from") != ROLES[number % 2]:
            raise RowError("bad conversation", f"message {number} must be from {ROLES[number % 2]!r}")
    return [{"from": message["from"], "value": message["value"]} for message in messages]


def place_media(messages: list[dict[str, str]], modalities: Sequence[Modality]) -> tuple[dict[str, str], ...]:
    """Replace each modality's tag by `<query>`; every tag exactly once, in the order of `modalities`."""
    text = "\x00".join(message["value"] for message in messages)
    tags = [LLAVA_MEDIA_TAGS[modality] for modality in modalities]
    found = sorted((text.find(tag), tag) for tag in tags)
    if any(text.count(tag) != 1 for tag in tags) or [tag for _, tag in found] != tags:
        raise RowError("bad media tags", f"need {', '.join(tags)} once each, in this order")
    if QUERY_PLACEHOLDER in text or any(token in text for token in (IM_START, IM_PATCH, IM_END)):
        raise RowError("bad media tags", f"the text holds {QUERY_PLACEHOLDER} or a media token itself")
    for tag in tags:
        text = text.replace(tag, QUERY_PLACEHOLDER)
    values = text.split("\x00")
    return tuple({"from": m["from"], "value": value} for m, value in zip(messages, values, strict=True))


def row_parser(modalities: Sequence[Modality]) -> Callable[[Any], LlavaRow]:
    """A `parse_rows` callback for LLaVA rows of `modalities`."""
    key = modalities[0]

    def parse(row: Any) -> LlavaRow:
        if not isinstance(row, dict):
            raise RowError("not an object", f"got {type(row).__name__}")
        media_id = row.get(key)
        if not isinstance(media_id, str) or not media_id.strip():
            raise RowError("missing media", f"{key!r} must name the {key} file")
        return LlavaRow(media_id, place_media(parse_messages(row), modalities))

    return parse


class LlavaSource:
    """A LLaVA conversation file over its media folders (a `SampleSource`).

    Args:
        name: Dataset name.
        rows: Validated rows, in file order.
        media: Loads a row's media.
        encode: The template version's tokenisation and masking.
        context: Tokenizer, length limit and the faithful flags.
        bad_rows: Problem kind -> malformed rows dropped at build time.
    """

    def __init__(  # noqa: PLR0913 - the parts of a source, one argument each
        self,
        name: str,
        rows: Sequence[LlavaRow],
        media: MediaLoader,
        encode: Encoder,
        context: DataContext,
        bad_rows: dict[str, int] | None = None,
    ) -> None:
        self.name, self.rows, self.media, self.encode = name, list(rows), media, encode
        self.tokenizer, self.max_txt_len = context.tokenizer, context.model.max_txt_len
        self.bos_mask_on_padded_rows = context.model.faithful.bos_mask_on_padded_rows
        self.bad_rows = dict(bad_rows or {})

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, index: int, train: bool, generator: torch.Generator) -> MultimodalSample:
        """Row `index` -> sample (LLaVA data has no random choices; `generator` serves the media processors).

        Raises:
            MediaError: a media file is missing or unusable.
        """
        row = self.rows[index]
        media = self.media.load(row.media_id, train, generator)
        encoded = self.encode(row.conversation, self.tokenizer, self.media.soft_tokens_of(media), self.max_txt_len)
        return MultimodalSample(encoded=encoded, media=media, source=self.name, index=index)


@DATASETS.register("llava_json")
def build_llava_json(name: str, cfg: DatasetConfig, context: DataContext) -> LlavaSource:
    """A LLaVA JSON (`cfg.annotations`) over the folders of `cfg.modalities`, in the model's LLaVA version."""
    template = context.model.chat_template
    if template not in LLAVA_VERSIONS:
        raise ValueError(
            f"dataset {name}: llava_json trains with model.chat_template {sorted(LLAVA_VERSIONS)}, not {template!r}"
        )
    for token in (IM_START, IM_PATCH, IM_END):
        media_token_id(context.tokenizer, token)
    if cfg.annotations is None:
        raise ValueError(f"dataset {name}: annotations (the LLaVA JSON) is required")
    media = build_media_loader(name, cfg, context.model)
    rows, bad_rows = parse_rows(
        cfg.annotations, read_annotation_list(cfg.annotations), row_parser(media.modalities), cfg.skip_bad_rows
    )
    return LlavaSource(name, rows, media, LLAVA_VERSIONS[template], context, bad_rows)
