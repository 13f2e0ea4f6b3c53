"""Stage-1 captions in webdataset tar shards, read map-style through a header index.

Why shards: LAION-scale stage-1 data is hundreds of millions of small files; tar shards turn them into a few
thousand large sequential files that copy, list and cache well. webdataset's `TarWriter` writes them, so the
shards are ordinary webdataset shards (`wds.WebDataset(...).decode("pil").to_tuple("jpg", "json")` reads them).

Why map-style instead of webdataset's streaming pipeline: every `SampleSource` in this package is indexable, so the
mixture can (1) resume exactly at the sample where a run stopped, (2) shuffle deterministically from a seed,
independent of worker count and shard boundaries, and (3) split samples over ranks itself. A stream gives none of
the three without extra state. Random access costs one index: on first use every shard's tar headers are scanned
with `tarfile` (headers only; data is skipped by seeking, nothing is decoded) and the (offset, size) of each member
is cached in `<shard>.index.json` next to the shard; a later build reuses the cache while the shard's size and
modification time are unchanged. `load(index)` then seeks and decodes that one sample.

Shard layout, one sample per tar key (webdataset convention: key = member name up to its first dot):

    <key>.json          {"id": original media id, "caption": str or [str, ...]}
    <key>.jpg|png|...   image: the original file's bytes, extension from its suffix
    <key>.wav|flac|...  audio: the original file's bytes
    <key>.f0000.jpg ... video given as a frame folder: its frame files in name order, renumbered f0000, f0001, ...
    <key>.mp4|...       video given as a file: its bytes

Keys are running numbers (`00000000`, `00000001`, ...) across all shards of one `write_shards` call
(`chatbridge/data/shard_writer.py`), because media ids such as `img_0001.png` contain dots and webdataset would cut
them. Every member is handed to the modality's processor as an in-memory stream; the processors read streams as
they read files, so shards and folders go through exactly the same preprocessing.

Bad shards: an unreadable shard (not a tar) contributes no samples; in a truncated or partly corrupt shard the
samples whose members run past the readable data, and the last sample before a missing end-of-archive marker, are
dropped. Both are counted per shard (`ShardSource.dropped`) and logged with the shard's name. A bad member (an
undecodable image, say) is only found at `load`, which raises `MediaError` like the JSON sources.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import braceexpand
import torch
from torch import Tensor

from chatbridge.config import DatasetConfig, Modality
from chatbridge.data.datasets.base import (
    DataContext,
    Processor,
    RowError,
    build_processor,
    pick_index,
    soft_token_counts,
    text_choices,
)
from chatbridge.data.datasets.captions import encode_caption, single_modality
from chatbridge.data.processors.errors import MediaError, decoding
from chatbridge.data.sample import Medium, MultimodalSample
from chatbridge.errors import UserError
from chatbridge.registry import DATASETS

logger = logging.getLogger(__name__)

INDEX_SUFFIX = ".index.json"
INDEX_VERSION = 1
MEMBER_NAME = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")
"""webdataset's `base_plus_ext`: (key, extension) of a member name."""
FRAME_MEMBER = re.compile(r"^f(\d+)\.(jpg|jpeg|png|bmp|webp)$")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "webp")
AUDIO_EXTENSIONS = ("wav", "flac", "mp3", "ogg")
VIDEO_EXTENSIONS = ("mp4", "avi", "mkv", "webm", "mov")
TAR_END_BYTES = 1024
"""A complete tar ends with two zero blocks of 512 bytes."""

Members = dict[str, tuple[int, int]]
"""Extension -> (data offset, size) of one sample's members."""


# ----------------------------------------------------------------------------------------------- index


@dataclass
class ShardIndex:
    """The complete samples of one shard, in tar order.

    Attributes:
        samples: (key, members) per sample.
        dropped: Samples lost to truncation or corruption (countable ones; a corrupt header hides the rest).
        problem: What was wrong with the shard; empty for a clean one.
    """

    samples: list[tuple[str, Members]] = field(default_factory=list)
    dropped: int = 0
    problem: str = ""


def read_tar_headers(path: Path) -> tuple[list[tarfile.TarInfo], int, str]:
    """Every readable member header, the offset where reading stopped, and a problem (empty if none)."""
    members: list[tarfile.TarInfo] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            try:
                for info in tar:  # reads headers; member data is skipped by seeking
                    members.append(info)
            except (tarfile.TarError, EOFError, OSError) as error:
                return members, tar.offset, f"stopped reading after {len(members)} members: {error}"
            return members, tar.offset, ""
    except (tarfile.TarError, EOFError, OSError) as error:
        return [], 0, f"not a readable tar: {error}"


def has_end_marker(path: Path, offset: int) -> bool:
    """Whether the two zero blocks that close a complete tar follow the last member."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        tail = handle.read(TAR_END_BYTES)
    return len(tail) == TAR_END_BYTES and not any(tail)


def scan_shard(path: Path) -> ShardIndex:
    """Indexes a shard from its headers, dropping samples that a truncation or corruption may have cut."""
    infos, stop, problem = read_tar_headers(path)
    size = path.stat().st_size
    grouped: dict[str, Members] = {}
    incomplete: set[str] = set()
    for info in infos:
        match = MEMBER_NAME.match(info.name)
        if not info.isfile() or match is None:
            continue
        key, extension = match.groups()
        grouped.setdefault(key, {})[extension] = (info.offset_data, info.size)
        if info.offset_data + info.size > size:
            incomplete.add(key)
    if infos and not problem and not has_end_marker(path, stop):
        problem = f"no end-of-archive marker after byte {stop} of {size} (truncated or corrupt)"
    if problem and grouped:
        incomplete.add(next(reversed(grouped)))  # the last sample may miss members that were cut off
    incomplete |= {key for key, members in grouped.items() if "json" not in members}
    samples = [(key, members) for key, members in grouped.items() if key not in incomplete]
    return ShardIndex(samples, len(incomplete), problem)


def index_path(shard: Path) -> Path:
    """Where the index of `shard` is cached."""
    return shard.with_name(shard.name + INDEX_SUFFIX)


def load_shard_index(shard: Path) -> ShardIndex:
    """The cached index of `shard` if it matches the shard's size and mtime, else a fresh scan (then cached).

    A cache that cannot be written (read-only folder) only costs a rescan next time, so it is logged, not raised.
    """
    stat = shard.stat()
    stamp = {"version": INDEX_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    cache = index_path(shard)
    try:
        cached = json.loads(cache.read_text())
        if {key: cached.get(key) for key in stamp} == stamp:
            samples = [(key, {ext: tuple(span) for ext, span in members.items()}) for key, members in cached["samples"]]
            return ShardIndex(samples, cached["dropped"], cached["problem"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # no cache, or a stale or damaged one: rescan
    index = scan_shard(shard)
    content = {**stamp, "samples": index.samples, "dropped": index.dropped, "problem": index.problem}
    try:
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        partial.write_text(json.dumps(content))
        os.replace(partial, cache)
    except OSError as error:
        logger.warning("could not cache the index of %s (%s); it will be rebuilt next time", shard, error)
    return index


def resolve_shards(spec: str | Path) -> list[Path]:
    """Shard paths from a folder (its `*.tar`, sorted), a brace pattern (`dir/shard-{000000..000009}.tar`) or one
    file.

    Raises:
        ValueError: no shard found, or a shard named by the pattern does not exist.
    """
    spec = str(spec)
    if Path(spec).is_dir():
        shards = sorted(Path(spec).glob("*.tar"))
    else:
        shards = [Path(name) for name in braceexpand.braceexpand(spec)]
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing or not shards:
        raise UserError(f"shards {spec!r}: " + (f"missing {missing[:5]}" if missing else "no .tar files found"))
    return shards


# ----------------------------------------------------------------------------------------------- reading


def frame_members(members: Members) -> list[str]:
    """Extensions of a sample's frame members, in frame order."""
    frames = [(int(match.group(1)), ext) for ext in members if (match := FRAME_MEMBER.match(ext))]
    return [ext for _, ext in sorted(frames)]


class MemberFrames(Sequence[BytesIO]):
    """The frame members of one sample as a sequence a video processor reads lazily: only chosen frames are read."""

    def __init__(self, source: ShardSource, index: int, extensions: list[str]) -> None:
        self.source, self.index, self.extensions = source, index, extensions

    def __len__(self) -> int:
        return len(self.extensions)

    def __getitem__(self, number: int) -> BytesIO:  # type: ignore[override]
        return BytesIO(self.source.read_member(self.index, self.extensions[number]))

    def __iter__(self) -> Iterator[BytesIO]:
        return (self[number] for number in range(len(self)))


class ShardSource:
    """Stage-1 captions from webdataset shards, one modality (a `SampleSource`).

    Args:
        name: Dataset name.
        shards: Shard paths.
        samples: (shard number, key, members) per sample, in shard then tar order.
        modality: The media of every sample.
        processor: The modality's processor (built from the dataset's `ProcessorConfig`).
        context: Tokenizer and model config.
        dropped: Shard name -> samples dropped by the index builder, for every damaged shard.
        problems: Shard name -> what was wrong with it.
    """

    def __init__(  # noqa: PLR0913 - the index, the processor and the damage report
        self,
        name: str,
        shards: Sequence[Path],
        samples: Sequence[tuple[int, str, Members]],
        modality: Modality,
        processor: Processor,
        context: DataContext,
        dropped: dict[str, int] | None = None,
        problems: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.shards = list(shards)
        self.samples = list(samples)
        self.modality = modality
        self.processor = processor
        self.tokenizer, self.max_txt_len = context.tokenizer, context.model.max_txt_len  # plain values, as captions
        self.soft_tokens = soft_token_counts(context.model, {modality: processor})[modality]
        self.dropped = dict(dropped or {})
        self.problems = dict(problems or {})
        self.bos_mask_on_padded_rows = False  # stage-1 data, as `CaptionSource`

    def __len__(self) -> int:
        return len(self.samples)

    def label(self, index: int, extension: str) -> str:
        """`shard.tar:key.ext`, the path reported in MediaErrors."""
        shard, key, _ = self.samples[index]
        return f"{self.shards[shard]}:{key}.{extension}"

    def read_member(self, index: int, extension: str) -> bytes:
        """The bytes of one member of sample `index`, read by seeking (no other member is touched)."""
        shard, _, members = self.samples[index]
        offset, size = members[extension]
        with open(self.shards[shard], "rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def read_json(self, index: int) -> dict[str, Any]:
        """The sample's `{"id", "caption"}` record.

        Raises:
            MediaError: "undecodable" if it is not a JSON object (a damaged member; the mixture skips it).
        """
        with decoding(self.label(index, "json")):
            record = json.loads(self.read_member(index, "json"))
        if not isinstance(record, dict):
            raise MediaError("undecodable", self.label(index, "json"), "not a JSON object")
        return record

    def load(self, index: int, train: bool, generator: torch.Generator) -> MultimodalSample:
        """Sample `index`: caption drawn first, then the media, in the same order as `CaptionSource`, so a JSON
        dataset and its shards give identical samples for the same generator state.

        Raises:
            MediaError: the media member is missing or unusable, or the json member is damaged.
        """
        try:
            captions = text_choices(self.read_json(index), "caption", "no caption")
        except RowError as error:
            raise MediaError("undecodable", self.label(index, "json"), str(error)) from error
        caption = captions[pick_index(len(captions), train, generator)]
        media = [Medium(self.modality, self.decode_media(index, train, generator))]
        encoded = encode_caption(caption, self.soft_tokens, self.tokenizer, self.max_txt_len)
        return MultimodalSample(encoded, media, self.name, index)

    def decode_media(self, index: int, train: bool, generator: torch.Generator) -> Tensor:
        """The processed media tensor of sample `index` (see the module docstring for the member layout)."""
        members = self.samples[index][2]
        frames = frame_members(members) if self.modality == "video" else []
        if frames:
            source: Any = MemberFrames(self, index, frames)
            label = self.label(index, "f*")
        else:
            known = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS, "video": VIDEO_EXTENSIONS}[self.modality]
            extension = next((ext for ext in known if ext in members), None)
            if extension is None:
                found = sorted(members)
                raise MediaError("missing", self.label(index, "*"), f"no {self.modality} member among {found}")
            source, label = BytesIO(self.read_member(index, extension)), self.label(index, extension)
            if not source.getbuffer().nbytes:
                raise MediaError("empty", label, "zero bytes")
        try:
            return self.processor(source, train, generator)
        except MediaError as error:  # the processor saw a stream; name the member
            raise MediaError(error.reason, label, error.detail) from error


@dataclass
class ShardSet:
    """The samples of several shards and what was wrong with the damaged ones (see `ShardSource`)."""

    samples: list[tuple[int, str, Members]] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)


def index_shards(name: str, shards: Sequence[Path]) -> ShardSet:
    """Indexes (or reuses the cached index of) every shard; logs each damaged shard once."""
    shard_set = ShardSet()
    for number, shard in enumerate(shards):
        index = load_shard_index(shard)
        shard_set.samples += [(number, key, members) for key, members in index.samples]
        if index.problem or index.dropped:
            shard_set.dropped[shard.name] = index.dropped
            shard_set.problems[shard.name] = index.problem
            logger.warning("dataset %s: shard %s: %s; %d samples dropped", name, shard, index.problem, index.dropped)
    return shard_set


@DATASETS.register("caption_shards")
def build_caption_shards(name: str, cfg: DatasetConfig, context: DataContext) -> ShardSource:
    """Stage-1 captions from shards written by `write_shards`; `cfg.annotations` is the shard folder or pattern."""
    modality = single_modality(name, cfg)
    if cfg.annotations is None:
        raise UserError(f"dataset {name}: annotations (a shard folder or brace pattern) is required")
    shards = resolve_shards(cfg.annotations)
    found = index_shards(name, shards)
    processor = build_processor(modality, cfg.processor)
    return ShardSource(name, shards, found.samples, modality, processor, context, found.dropped, found.problems)
