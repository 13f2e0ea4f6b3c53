"""Writing webdataset tar shards of stage-1 captions, and packing a caption file and its media folder into them.

The reader is `chatbridge/data/datasets/shards.py` (see its docstring for the member layout); this module only
writes. Shards are written with webdataset's `TarWriter`, so they are ordinary webdataset shards.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import webdataset

from chatbridge.config import Modality, ProcessorConfig
from chatbridge.data.datasets.base import (
    RowError,
    build_processor,
    format_counts,
    read_annotation_list,
    resolve_media,
)
from chatbridge.data.datasets.captions import parse_caption_row
from chatbridge.data.datasets.shards import AUDIO_EXTENSIONS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.processors.video import list_frame_files

SHARD_PATTERN = "shard-{:06d}.tar"
KEY_DIGITS = 8


def media_members(modality: Modality, path: Path) -> dict[str, bytes]:
    """The tar members (extension -> bytes) that store one media file or frame folder (see the module layout)."""
    if modality == "video" and path.is_dir():
        frames = list_frame_files(path)
        return {f"f{number:04d}{frame.suffix.lower()}": frame.read_bytes() for number, frame in enumerate(frames)}
    known = {"image": IMAGE_EXTENSIONS, "audio": AUDIO_EXTENSIONS, "video": VIDEO_EXTENSIONS}[modality]
    extension = path.suffix.lower().lstrip(".")
    # Decoders sniff the content, so an unusual suffix only needs a name the loader recognises.
    return {extension if extension in known else known[0]: path.read_bytes()}


def sample_members(media_id: str, caption: str | Sequence[str], media: Mapping[Modality, Path]) -> dict[str, bytes]:
    """All members of one sample; raises ValueError if two modalities would use the same extension."""
    members = {"json": json.dumps({"id": media_id, "caption": caption}, ensure_ascii=False).encode("utf-8")}
    for modality, path in media.items():
        stored = media_members(modality, Path(path))
        if members.keys() & stored.keys():
            raise ValueError(f"sample {media_id!r}: members {sorted(members.keys() & stored.keys())} collide")
        members.update(stored)
    return members


def write_shards(
    samples: Iterable[tuple[str, str | Sequence[str], Mapping[Modality, Path]]],
    out_dir: str | Path,
    max_per_shard: int = 1000,
) -> list[Path]:
    """Writes `(media id, caption(s), {modality: file or frame folder})` samples into webdataset tar shards.

    Samples are consumed lazily (a generator that validates media works). Each shard is written to a temporary
    name and renamed when complete, with member times fixed at 0, so equal input gives byte-identical shards.

    Returns:
        The shard paths `out_dir/shard-000000.tar`, ... in order.

    Raises:
        FileExistsError: `out_dir` already holds shards (mixing two packings would duplicate samples).
    """
    if max_per_shard < 1:
        raise ValueError(f"max_per_shard must be positive, got {max_per_shard}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if any(out_dir.glob("shard-*.tar")):
        raise FileExistsError(f"{out_dir} already holds shards; write to an empty folder")
    shards: list[Path] = []
    writer, partial = None, None
    for number, (media_id, caption, media) in enumerate(samples):
        if number % max_per_shard == 0:
            _finish_shard(writer, partial, shards)
            partial = out_dir / (SHARD_PATTERN.format(len(shards)) + ".tmp")
            writer = webdataset.TarWriter(str(partial), encoder=False, mtime=0.0)
        writer.write({"__key__": f"{number:0{KEY_DIGITS}d}", **sample_members(media_id, caption, media)})
    _finish_shard(writer, partial, shards)
    return shards


def _finish_shard(writer: webdataset.TarWriter | None, partial: Path | None, shards: list[Path]) -> None:
    """Closes the shard being written and renames it into place."""
    if writer is None or partial is None:
        return
    writer.close()
    final = partial.with_suffix("")  # drop ".tmp"
    partial.rename(final)
    shards.append(final)


@dataclass
class PackReport:
    """What `pack_caption_shards` did.

    Attributes:
        shards: Shards written.
        written: Samples written.
        skipped: Reason -> samples left out (media error reasons, or `bad row (<problem>)`).
        first_skipped: (id or row, reason) of the first few samples left out.
    """

    shards: list[Path] = field(default_factory=list)
    written: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    first_skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, what: str, reason: str, max_examples: int = 5) -> None:
        """Records one left-out sample."""
        self.skipped[reason] += 1
        if len(self.first_skipped) < max_examples:
            self.first_skipped.append((what, reason))

    def format(self) -> str:
        """A human-readable summary."""
        folder = self.shards[0].parent if self.shards else "-"
        lines = [f"written: {self.written} samples in {len(self.shards)} shards ({folder})"]
        reasons = f" ({format_counts(self.skipped)})" if self.skipped else ""
        lines.append(f"skipped: {sum(self.skipped.values())}{reasons}")
        if self.first_skipped:
            lines.append("first skipped: " + ", ".join(f"{what} ({reason})" for what, reason in self.first_skipped))
        return "\n".join(lines)


def valid_samples(
    rows: Sequence[Any], media_root: Path, modality: Modality, processor: Any, report: PackReport
) -> Iterable[tuple[str, str | list[str], dict[Modality, Path]]]:
    """Rows whose media the real processor accepts (evaluation mode), as `write_shards` input; others go to
    `report`. A frame folder is checked on the frames evaluation picks, not on every frame."""
    generator = torch.Generator().manual_seed(0)
    for number, row in enumerate(rows):
        try:
            parsed = parse_caption_row(row)
        except RowError as error:
            report.skip(f"row {number}", f"bad row ({error.kind})")
            continue
        try:
            path = resolve_media(modality, media_root, parsed.media_id)
            processor(path, False, generator)
        except MediaError as error:
            report.skip(parsed.media_id, error.reason)
            continue
        report.written += 1
        captions = parsed.captions
        yield parsed.media_id, captions[0] if len(captions) == 1 else list(captions), {modality: path}


def pack_caption_shards(
    annotations: str | Path,
    media_root: str | Path,
    modality: Modality,
    out_dir: str | Path,
    processor: ProcessorConfig,
    max_per_shard: int = 1000,
) -> PackReport:
    """Packs a stage-1 caption file and its media folder into shards, leaving out and counting bad rows and media.

    `processor` must be complete for `modality` (resolved against an encoder); its processor checks every file.
    """
    media_processor = build_processor(modality, processor)
    report = PackReport()
    rows = read_annotation_list(annotations)
    samples = valid_samples(rows, Path(media_root), modality, media_processor, report)
    report.shards = write_shards(samples, out_dir, max_per_shard)
    return report
