"""Video preprocessing: a video file or a folder of frames -> (n, 3, S, S), frames chosen as the reference did.

See docs/reference/chatbridge.md §1.11.

Training in the reference split the frames into `n` contiguous near-equal groups (VALOR's `split`) and took one
random frame per group (TSN-style); evaluation took each group's middle frame; the demo took the first frame of
each quarter (`arange(0, L, L/n)`). All three rules are pure functions here so they can be tested by hand. Every
chosen frame then goes through the image transform (`ImageProcessor.transform`), so file and folder inputs, and
training and evaluation, share one pixel pipeline (the reference's demo resized inside decord instead, §7.12).

Short videos: when a video has fewer than `n` frames, indices repeat (VALOR pads the frame list with its last
frame; the uniform rule repeats by flooring), so the output always has exactly `n` frames and a 1-frame video
gives `n` copies of that frame. Keeping `n` fixed keeps batch shapes and the connector's token count
(`n * 257` tokens) constant, at the cost of feeding duplicated frames.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Literal, get_args

import decord
import torch

from chatbridge.config import ProcessorConfig
from chatbridge.data.processors.errors import MediaError, decoding, require_file
from chatbridge.data.processors.fbank import choose_from_groups, split_into_groups
from chatbridge.data.processors.image import ImageProcessor, ImageSource, build_clip_image, decode_image
from chatbridge.registry import PROCESSORS

FrameSampling = Literal["segment_random", "segment_middle", "uniform"]
FRAME_SAMPLINGS: tuple[str, ...] = get_args(FrameSampling)
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""Files of a frame folder that count as frames (the reference listed everything, so a stray file broke it)."""
VideoSource = str | os.PathLike | BinaryIO | Sequence[ImageSource]
"""A video file or frame folder, an open video stream, or the frames in order (read only when chosen)."""


def segment_groups(num_frames_total: int, num_segments: int) -> list[list[int]]:
    """Splits frame indices 0..total-1 into `num_segments` contiguous groups, as VALOR's `split` helper does.

    With `k, m = divmod(total, n)` the first `m` groups get `k + 1` frames and the rest `k`. A list shorter than
    `num_segments` is first padded with its last index, so every group is non-empty. The audio segments use the
    same helper (`fbank.split_into_groups`), as in the reference.
    Example: (10, 4) -> [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]].
    """
    if num_frames_total < 1 or num_segments < 1:
        raise ValueError(f"need at least one frame and one segment, got {num_frames_total} and {num_segments}")
    return split_into_groups(list(range(num_frames_total)), num_segments)


def select_frame_indices(
    num_frames_total: int, num_frames: int, mode: FrameSampling, generator: torch.Generator | None = None
) -> list[int]:
    """Chooses `num_frames` frame indices out of `num_frames_total`.

    Args:
        num_frames_total: Frames in the video (at least 1).
        num_frames: Frames to return (n).
        mode: "segment_random": one uniformly random frame per group (training); "segment_middle": the group's
            middle frame, index `(len + 1) // 2 - 1` (evaluation); "uniform": `int(i * total / n)`, the demo's
            `arange(0, L, L/n)` cast to int (always exactly n values, unlike a float `arange`).
        generator: Random source, required by "segment_random" (no hidden global RNG).

    Example: total 10, n 4 -> middle [1, 4, 6, 8], uniform [0, 2, 5, 7], random one of each of
    [0-2], [3-5], [6-7], [8-9].
    """
    if mode == "uniform":
        if num_frames_total < 1 or num_frames < 1:
            raise ValueError(f"need at least one frame to pick and to return, got {num_frames_total}, {num_frames}")
        step = num_frames_total / num_frames
        return [int(i * step) for i in range(num_frames)]
    if mode not in ("segment_middle", "segment_random"):
        raise ValueError(f"unknown frame sampling {mode!r}; known: {FRAME_SAMPLINGS}")
    groups = segment_groups(num_frames_total, num_frames)
    return choose_from_groups(groups, "middle" if mode == "segment_middle" else "random", generator)


def list_frame_files(folder: Path) -> list[Path]:
    """Frame images of a folder sorted by file name (names must be zero-padded, e.g. `frame_0007.jpg`)."""
    files = sorted(
        (path for path in folder.iterdir() if path.suffix.lower() in FRAME_EXTENSIONS), key=lambda path: path.name
    )
    if not files:
        raise MediaError("empty", folder, f"no frame files with extensions {FRAME_EXTENSIONS}")
    return files


class VideoProcessor:
    """A video file or a folder of frames -> (n, 3, S, S) normalised frames.

    Args:
        num_frames: Frames per video (n).
        frame_sampling: Fixed frame rule, or None for "segment_random" in training and "segment_middle" otherwise.
        image_processor: Per-frame pixel transform (resize, normalise, optional augmentation shared by all frames).
    """

    def __init__(self, num_frames: int, frame_sampling: FrameSampling | None, image_processor: ImageProcessor) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        if frame_sampling is not None and frame_sampling not in FRAME_SAMPLINGS:
            raise ValueError(f"unknown frame sampling {frame_sampling!r}; known: {FRAME_SAMPLINGS}")
        self.num_frames = num_frames
        self.frame_sampling = frame_sampling
        self.image_processor = image_processor

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one output: (n, 3, S, S)."""
        return (self.num_frames, *self.image_processor.block_shape)

    def __call__(
        self, video: VideoSource, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decodes only the chosen frames of `video` -> (n, 3, S, S).

        `train` selects "segment_random" when no fixed `frame_sampling` is set; random frame choice and
        augmentation draw from `generator`, which they require.

        Raises:
            MediaError: "missing", "empty" (zero bytes, zero frames, no frame files) or "undecodable".
        """
        mode = self.sampling_mode(train)
        if isinstance(video, str | os.PathLike) and Path(video).is_dir():
            frames = self.read_frames(list_frame_files(Path(video)), mode, generator)
        elif isinstance(video, str | os.PathLike) or hasattr(video, "read"):
            frames = self.read_video_file(video, mode, generator)
        else:
            frames = self.read_frames(video, mode, generator)
        return self.image_processor.transform(frames, train, generator)

    def sampling_mode(self, train: bool) -> FrameSampling:
        """The configured rule, or the reference's default for this phase."""
        if self.frame_sampling is not None:
            return self.frame_sampling
        return "segment_random" if train else "segment_middle"

    def read_video_file(
        self, video: str | os.PathLike | BinaryIO, mode: FrameSampling, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """Chosen frames of a video file, each (3, H, W) in [0, 1]; decord seeks to them instead of decoding all."""
        path = require_file(video) if isinstance(video, str | os.PathLike) else video
        reader = self.open_reader(path)
        if len(reader) == 0:
            raise MediaError("empty", path, "no video frames")
        indices = select_frame_indices(len(reader), self.num_frames, mode, generator)
        with decoding(path):
            pixels = torch.from_numpy(reader.get_batch(indices).asnumpy())  # (n, H, W, 3) uint8
        return list(pixels.permute(0, 3, 1, 2).float().div(255).unbind(0))

    def open_reader(self, path: Path | BinaryIO) -> decord.VideoReader:
        """A decord reader whose frames fit `max_pixels`: larger videos are decoded scaled down by FFmpeg."""
        # One thread: data-loader workers already run in parallel, decord's auto threading would oversubscribe.
        with decoding(path):
            reader = decord.VideoReader(_uri(path), num_threads=1)
            limit = self.image_processor.max_pixels
            if limit is None or len(reader) == 0:
                return reader
            height, width = reader[0].shape[:2]
            if height * width <= limit:
                return reader
            scale = math.sqrt(height * width / limit)
            if hasattr(path, "seek"):
                path.seek(0)
            return decord.VideoReader(
                _uri(path), num_threads=1, width=int(width / scale) // 2 * 2, height=int(height / scale) // 2 * 2
            )

    def read_frames(
        self, frames: Sequence[ImageSource], mode: FrameSampling, generator: torch.Generator | None
    ) -> list[torch.Tensor]:
        """Chosen frames of a frame sequence, each (3, H, W) in [0, 1]; only the chosen ones are read and decoded."""
        if len(frames) == 0:
            raise MediaError("empty", "frames", "no frames")
        indices = select_frame_indices(len(frames), self.num_frames, mode, generator)
        limit = self.image_processor.max_pixels
        decoded = {index: decode_image(frames[index], limit) for index in dict.fromkeys(indices)}
        return [decoded[index] for index in indices]


def _uri(path: Path | BinaryIO) -> str | BinaryIO:
    return str(path) if isinstance(path, Path) else path


@PROCESSORS.register("video_frames")
def build_video_frames(cfg: ProcessorConfig) -> VideoProcessor:
    """Frames of a video through the `clip_image` transform; `cfg.frame_sampling` None = train/eval default."""
    return VideoProcessor(
        num_frames=cfg.num_frames, frame_sampling=cfg.frame_sampling, image_processor=build_clip_image(cfg)
    )
