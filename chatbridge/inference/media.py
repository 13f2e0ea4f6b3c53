"""User media for inference: files -> preprocessed tensors, through the training processors at evaluation settings.

A bad file never becomes a traceback: every problem (missing, unsupported type, too large, undecodable, a video
without a sound track) is a `MediaInputError` whose message names the file and says what is wrong with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from chatbridge.config import Modality, ModelConfig, ProcessorConfig
from chatbridge.data.datasets.base import Processor, build_processor, soft_token_counts
from chatbridge.data.processors.errors import MediaError
from chatbridge.errors import UserError

SUFFIXES: dict[Modality, tuple[str, ...]] = {
    "image": (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"),
    "video": (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"),
    "audio": (".wav", ".mp3", ".flac", ".ogg", ".m4a", ".aac", ".opus"),
}
"""File types each modality accepts; a video's sound track is read from the video file itself."""
REASONS = {
    "missing": "no such file",
    "empty": "it is empty (or has no such track)",
    "undecodable": "it cannot be decoded",
    "too_short": "it is too short",
    "non_finite": "it contains invalid (NaN or infinite) samples",
    "too_large": "it is too large",
}


class MediaInputError(UserError):
    """A user's media file that cannot be used; the message names the file."""


@dataclass(frozen=True)
class MediaFile:
    """One medium to show the model: a file (or a video's frame folder) read as `modality`.

    A video with its own sound track is two media files of the same path: `video`, then `audio`.
    """

    path: Path
    modality: Modality


def media_files(
    images: Sequence[str | Path] = (),
    videos: Sequence[str | Path] = (),
    audios: Sequence[str | Path] = (),
    with_audio: bool = False,
) -> list[MediaFile]:
    """Media in prompt order: images, then each video (followed by its sound track if `with_audio`), then audio."""
    media = [MediaFile(Path(path), "image") for path in images]
    for path in videos:
        media.append(MediaFile(Path(path), "video"))
        if with_audio:
            media.append(MediaFile(Path(path), "audio"))
    return media + [MediaFile(Path(path), "audio") for path in audios]


class MediaReader:
    """Turns `MediaFile`s into model inputs with the processors a model's encoders need.

    Args:
        processor: Resolved preprocessing (the config's top-level `processor`).
        model: The model config: which modalities are routed, and soft tokens per medium.
        max_megabytes: Files larger than this are refused before they are read (None: no limit).
    """

    def __init__(self, processor: ProcessorConfig, model: ModelConfig, max_megabytes: float | None = None) -> None:
        self.processors: dict[Modality, Processor] = {
            modality: build_processor(modality, processor)
            for modality in model.routes  # type: ignore[misc]
        }
        self.soft_tokens = soft_token_counts(model, self.processors)
        self.max_megabytes = max_megabytes

    def read(self, medium: MediaFile) -> Tensor:
        """The preprocessed tensor of one file, as evaluation preprocesses it (middle frames and segments).

        Raises:
            MediaInputError: the file cannot be used; the message names it and the reason.
        """
        self.check(medium)
        try:
            return self.processors[medium.modality](medium.path, False, None)
        except MediaError as error:
            what = (
                "sound track"
                if medium.modality == "audio" and medium.path.suffix.lower() in SUFFIXES["video"]
                else medium.modality
            )
            detail = f" ({error.detail})" if error.detail else ""
            raise MediaInputError(f"{medium.path}: cannot use it as {what}: {REASONS[error.reason]}{detail}") from None

    def check(self, medium: MediaFile) -> None:
        """Refuse a file before decoding it: unknown modality, missing, unsupported type or over the size limit."""
        path, modality = medium.path, medium.modality
        if modality not in self.processors:
            raise MediaInputError(f"{path}: this model takes {sorted(self.processors)}, not {modality}")
        if path.is_dir() and modality == "video":
            return  # a folder of frames
        if not path.is_file():
            raise MediaInputError(f"{path}: no such file")
        allowed = SUFFIXES[modality] + (SUFFIXES["video"] if modality == "audio" else ())
        if path.suffix.lower() not in allowed:
            raise MediaInputError(
                f"{path}: unsupported {modality} type {path.suffix or '(none)'!r}; use {', '.join(allowed)}"
            )
        megabytes = path.stat().st_size / 2**20
        if self.max_megabytes is not None and megabytes > self.max_megabytes:
            raise MediaInputError(f"{path}: {megabytes:.1f} MB is over the {self.max_megabytes:g} MB limit")
