"""ChatBind's preprocessing for ImageBind: images, video clips and audio clips (docs/reference/chatbind.md §3).

* `imagebind_image`: what `CLIPImageProcessor` (transformers 4.28, slow path) did for ChatBind: RGB, short side to
  S with PIL bicubic on uint8 pixels, centre crop, CLIP normalisation -> (3, S, S). transformers 5's default CLIP
  processor is torchvision-based and its bicubic differs (up to 0.03 after normalisation, §11); its PIL backend,
  `CLIPImageProcessorPil`, is the 4.28 computation, so that is the one used.
* `imagebind_video`: ImageBind's `load_and_transform_video_data`: `video_clips` clips of `clip_seconds` spread
  evenly over the video, `frames_per_clip` frames taken evenly from each (its first and last for 2), short side to
  S (bilinear, no antialias), CLIP normalisation, `video_crops` square crops along the long side
  -> (clips x crops, 3, frames, S, S), clip-major. pytorchvideo, which the reference used, is unmaintained; its
  clip sampler, temporal subsampling, short-side scale and uniform crop are re-written below (§11).
* `imagebind_audio`: ImageBind's `load_and_transform_audio_data`: `audio_clips` clips of `clip_seconds` spread
  evenly, each centred, 128-bin Kaldi fbank (Hanning window, HTK mel, no energy), zero-padded or cut to
  `clip_fbank_frames`, then `(x - mean) / std` -> (clips, 1, mel, frames).

Clip boundaries follow pytorchvideo's `ConstantClipsPerVideoSampler` arithmetic exactly (fractions, then `ceil`
for frame indices and `int` for sample indices), because they decide which frames and samples are seen. None of
these processors is random; `train` and `generator` are accepted for the common signature only.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import decord
import numpy as np
import torch
import torch.nn.functional as F
import torchaudio
from PIL import Image
from transformers import CLIPImageProcessorPil

from chatbridge.config import ProcessorConfig
from chatbridge.data.processors.audio import FBANK_WINDOW_MS, AudioSource, decode_audio
from chatbridge.data.processors.errors import MediaError, decoding, require_file, require_setting
from chatbridge.data.processors.fbank import resample
from chatbridge.data.processors.image import ImageSource, decode_image
from chatbridge.data.processors.video import VideoSource, list_frame_files
from chatbridge.registry import PROCESSORS


def clip_bounds(duration: float, clip_seconds: float, num_clips: int) -> list[tuple[Fraction, Fraction]]:
    """`num_clips` (start, end) times in seconds, starts spread evenly over [0, duration - clip_seconds].

    pytorchvideo's `ConstantClipsPerVideoSampler`: the step is `max(duration - clip, 0) / (clips - 1)`, so a
    medium no longer than one clip gives `num_clips` clips that all start at 0 (and may end after it).
    Example: 10 s, 2 s clips, 5 clips -> starts 0, 2, 4, 6, 8.
    """
    length = Fraction(clip_seconds)
    step = Fraction(max(duration - float(length), 0)) / max(num_clips - 1, 1)
    return [(step * index, step * index + length) for index in range(num_clips)]


def clip_frame_indices(
    num_frames: int, fps: float, bounds: tuple[Fraction, Fraction], frames_per_clip: int
) -> list[int]:
    """The frames of one clip as pytorchvideo's decord reader and `UniformTemporalSubsample` choose them.

    The clip holds frames `ceil(fps * start)` up to (excluding) `min(ceil(fps * end), num_frames)`; of those,
    `frames_per_clip` are taken at `linspace(0, T - 1, frames_per_clip)` (the first and the last for 2).
    """
    first, stop = math.ceil(fps * bounds[0]), min(math.ceil(fps * bounds[1]), num_frames)
    if stop <= first:
        raise ValueError(f"clip {bounds} of a {num_frames}-frame video at {fps} fps holds no frame")
    picks = torch.linspace(0, stop - first - 1, frames_per_clip).long()
    return [first + int(pick) for pick in picks]


def short_side_scale(frames: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """(N, C, H, W) -> short side `size`, long side `floor(size * long / short)`, bilinear (pytorchvideo's)."""
    height, width = frames.shape[-2:]
    if width < height:
        shape = (math.floor(height / width * size), size)
    else:
        shape = (size, math.floor(width / height * size))
    return F.interpolate(frames, size=shape, mode="bilinear", align_corners=False, antialias=antialias)


def uniform_crops(clip: torch.Tensor, size: int, num_crops: int) -> list[torch.Tensor]:
    """Square crops of (..., H, W) along the long side: start, centre, end for 3 crops; the centre for 1.

    pytorchvideo's `uniform_crop`: the centre offset is `ceil((side - size) / 2)`.
    """
    if num_crops not in (1, 3):
        raise ValueError(f"video_crops must be 1 or 3, got {num_crops}")
    height, width = clip.shape[-2:]
    crops = []
    for position in (0, 1, 2) if num_crops == 3 else (1,):
        top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
        if height > width:
            top = {0: 0, 1: top, 2: height - size}[position]
        else:
            left = {0: 0, 1: left, 2: width - size}[position]
        crops.append(clip[..., top : top + size, left : left + size])
    return crops


class ImageBindImageProcessor:
    """An image -> (3, S, S): RGB, short side S (PIL bicubic), centre crop, normalised (CLIPImageProcessor's).

    Args:
        image_size: Output side S.
        mean: Per-channel mean (3 values).
        std: Per-channel std (3 values).
    """

    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.image_size = image_size
        self.clip = CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
            image_mean=list(mean),
            image_std=list(std),
        )

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def __call__(
        self, source: ImageSource, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raises MediaError ("missing", "empty", "undecodable") for a file that is not an image."""
        pixels = self.clip(images=_open_rgb(source), return_tensors="np")["pixel_values"][0]
        return torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32))


def _open_rgb(source: ImageSource) -> Image.Image:
    """A decoded RGB PIL image (uint8), keeping the pixels PIL resizes (a float tensor would resize differently)."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if isinstance(source, str | os.PathLike):
        source = require_file(source)
    with decoding(source), Image.open(source) as image:
        return image.convert("RGB")  # converting loads the pixels, so truncated files fail inside `decoding`


class ImageBindVideoProcessor:
    """A video file, a frame folder or a frame sequence -> (clips x crops, 3, frames, S, S).

    Args:
        image_size: Crop side S (and short side after scaling).
        mean: Per-channel mean.
        std: Per-channel std.
        clip_seconds: Clip length.
        num_clips: Clips per video.
        num_crops: Crops per clip (1 or 3).
        frames_per_clip: Frames taken from each clip.
        folder_fps: Frame rate of frame folders and frame sequences.
        antialias: Antialiased short-side scaling (the reference's `interpolate` did not antialias).
    """

    def __init__(  # noqa: PLR0913 - the recipe's settings, one argument each
        self,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        clip_seconds: float,
        num_clips: int,
        num_crops: int,
        frames_per_clip: int,
        folder_fps: float,
        antialias: bool = False,
    ) -> None:
        if num_crops not in (1, 3):
            raise ValueError(f"video_crops must be 1 or 3, got {num_crops}")
        if min(num_clips, frames_per_clip) < 1 or min(clip_seconds, folder_fps) <= 0:
            raise ValueError("video_clips, frames_per_clip, clip_seconds and frame_folder_fps must be positive")
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.clip_seconds, self.num_clips, self.num_crops = clip_seconds, num_clips, num_crops
        self.frames_per_clip, self.folder_fps, self.antialias = frames_per_clip, folder_fps, antialias

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (self.num_clips * self.num_crops, 3, self.frames_per_clip, self.image_size, self.image_size)

    def __call__(
        self, video: VideoSource, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decodes only the frames the clips use.

        Raises:
            MediaError: "missing", "empty" (no frames) or "undecodable".
        """
        if isinstance(video, str | os.PathLike) and Path(video).is_dir():
            video = list_frame_files(Path(video))
        if isinstance(video, str | os.PathLike) or hasattr(video, "read"):
            indices, frames = self._read_video_file(video)
        else:
            indices, frames = self._read_frames(video)
        frames = short_side_scale(frames, self.image_size, self.antialias)  # (F, 3, H', W'), each frame once
        frames = (frames - self.mean) / self.std
        position = {index: row for row, index in enumerate(_distinct(indices))}
        clips = [frames[[position[index] for index in clip]].transpose(0, 1) for clip in indices]  # (3, T, H', W')
        return torch.stack([crop for clip in clips for crop in uniform_crops(clip, self.image_size, self.num_crops)])

    def clip_indices(self, num_frames: int, fps: float) -> list[list[int]]:
        """The frame indices of every clip of a `num_frames`-frame video at `fps`."""
        if num_frames < 1:
            raise ValueError("a video needs at least one frame")
        bounds = clip_bounds(num_frames / fps, self.clip_seconds, self.num_clips)
        return [clip_frame_indices(num_frames, fps, clip, self.frames_per_clip) for clip in bounds]

    def _read_video_file(self, video: str | os.PathLike | BinaryIO) -> tuple[list[list[int]], torch.Tensor]:
        path = require_file(video) if isinstance(video, str | os.PathLike) else video
        with decoding(path):
            reader = decord.VideoReader(str(path) if isinstance(path, Path) else path, num_threads=1)
        if len(reader) == 0:
            raise MediaError("empty", path, "no video frames")
        indices = self.clip_indices(len(reader), reader.get_avg_fps())
        with decoding(path):
            pixels = torch.from_numpy(reader.get_batch(_distinct(indices)).asnumpy())
        return indices, pixels.permute(0, 3, 1, 2).float() / 255

    def _read_frames(self, frames: Sequence[ImageSource]) -> tuple[list[list[int]], torch.Tensor]:
        if len(frames) == 0:
            raise MediaError("empty", "frames", "no frames")
        indices = self.clip_indices(len(frames), self.folder_fps)
        return indices, torch.stack([decode_image(frames[index]) for index in _distinct(indices)])


def _distinct(clips: list[list[int]]) -> list[int]:
    """Every frame index the clips use, once, in order of first use (each frame is decoded and scaled once)."""
    return list(dict.fromkeys(index for clip in clips for index in clip))


def imagebind_fbank(clip: torch.Tensor, sample_rate: int, num_mel_bins: int) -> torch.Tensor:
    """(channels, samples) -> (mel, frames): ImageBind's Kaldi fbank of channel 0 (25 ms Hanning windows every
    10 ms, HTK mel, no energy term, no dither; unlike BEATs, on the [-1, 1] samples)."""
    fbank = torchaudio.compliance.kaldi.fbank(
        clip,
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_length=FBANK_WINDOW_MS,
        frame_shift=10,
    )
    return fbank.transpose(0, 1)


class ImageBindAudioProcessor:
    """An audio file (or a video's sound track) -> (clips, 1, mel, frames) normalised fbank clips.

    Args:
        sample_rate: Rate the track is resampled to.
        num_mel_bins: Mel bins.
        clip_fbank_frames: Frames every clip's fbank is zero-padded or cut to.
        clip_seconds: Clip length.
        num_clips: Clips per track.
        fbank_mean: Normalisation mean.
        fbank_std: Normalisation std.
        centre_in_place: The reference's in-place centring on the shared waveform (faithful quirk).
    """

    def __init__(  # noqa: PLR0913 - the recipe's settings, one argument each
        self,
        sample_rate: int,
        num_mel_bins: int,
        clip_fbank_frames: int,
        clip_seconds: float,
        num_clips: int,
        fbank_mean: float,
        fbank_std: float,
        centre_in_place: bool = False,
    ) -> None:
        if min(sample_rate, num_mel_bins, clip_fbank_frames, num_clips) < 1 or clip_seconds <= 0:
            raise ValueError("sample_rate, num_mel_bins, clip_fbank_frames, audio_clips, clip_seconds must be > 0")
        self.sample_rate, self.num_mel_bins, self.clip_fbank_frames = sample_rate, num_mel_bins, clip_fbank_frames
        self.clip_seconds, self.num_clips = clip_seconds, num_clips
        self.fbank_mean, self.fbank_std, self.centre_in_place = fbank_mean, fbank_std, centre_in_place

    @property
    def block_shape(self) -> tuple[int, ...]:
        return (self.num_clips, 1, self.num_mel_bins, self.clip_fbank_frames)

    def __call__(
        self, audio: AudioSource, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Raises MediaError: "missing", "empty", "undecodable", "non_finite" or "too_short" (under one window)."""
        waveform = self.load_waveform(audio)  # (C, S) at self.sample_rate
        duration = waveform.shape[-1] / self.sample_rate
        fbanks = []
        for start, end in clip_bounds(duration, self.clip_seconds, self.num_clips):
            clip = waveform[:, int(start * self.sample_rate) : int(end * self.sample_rate)]
            if self.centre_in_place:
                clip -= clip.mean()  # a view: later overlapping clips see these samples shifted
            else:
                clip = clip - clip.mean()
            fbank = imagebind_fbank(clip, self.sample_rate, self.num_mel_bins)  # (mel, frames)
            fbank = F.pad(fbank, (0, max(self.clip_fbank_frames - fbank.shape[1], 0)))[:, : self.clip_fbank_frames]
            fbanks.append(fbank.unsqueeze(0))
        return (torch.stack(fbanks) - self.fbank_mean) / self.fbank_std  # padded frames end at -mean / std

    def load_waveform(self, audio: AudioSource) -> torch.Tensor:
        """Every channel of `audio` at `sample_rate` (the clip mean spans all channels; the fbank reads channel 0)."""
        path = require_file(audio) if isinstance(audio, str | os.PathLike) else audio
        waveform, file_rate = decode_audio(path, self.sample_rate)
        if waveform.numel() == 0:
            raise MediaError("empty", path, "no audio samples")
        if not torch.isfinite(waveform).all():
            raise MediaError("non_finite", path, "NaN or infinite samples")
        waveform = resample(waveform, file_rate, self.sample_rate)  # torchaudio's default sinc, as the reference
        if waveform.shape[-1] < self.sample_rate * FBANK_WINDOW_MS // 1000:
            raise MediaError("too_short", path, f"{waveform.shape[-1]} samples < one {FBANK_WINDOW_MS} ms window")
        return waveform


@PROCESSORS.register("imagebind_image")
def build_imagebind_image(cfg: ProcessorConfig) -> ImageBindImageProcessor:
    """ChatBind's CLIP image preprocessing at the encoder's size and statistics."""
    return ImageBindImageProcessor(
        require_setting(cfg, "image_size"), require_setting(cfg, "mean"), require_setting(cfg, "std")
    )


@PROCESSORS.register("imagebind_video")
def build_imagebind_video(cfg: ProcessorConfig) -> ImageBindVideoProcessor:
    """ImageBind's video clips: `cfg.video_clips` x `cfg.video_crops` inputs of `cfg.frames_per_clip` frames."""
    return ImageBindVideoProcessor(
        image_size=require_setting(cfg, "image_size"),
        mean=require_setting(cfg, "mean"),
        std=require_setting(cfg, "std"),
        clip_seconds=cfg.clip_seconds,
        num_clips=cfg.video_clips,
        num_crops=cfg.video_crops,
        frames_per_clip=require_setting(cfg, "frames_per_clip"),
        folder_fps=cfg.frame_folder_fps,
        antialias=cfg.antialias,
    )


@PROCESSORS.register("imagebind_audio")
def build_imagebind_audio(cfg: ProcessorConfig) -> ImageBindAudioProcessor:
    """ImageBind's audio clips at the encoder's rate, bins, clip length and statistics."""
    return ImageBindAudioProcessor(
        sample_rate=require_setting(cfg, "sample_rate"),
        num_mel_bins=require_setting(cfg, "num_mel_bins"),
        clip_fbank_frames=require_setting(cfg, "clip_fbank_frames"),
        clip_seconds=cfg.clip_seconds,
        num_clips=cfg.audio_clips,
        fbank_mean=require_setting(cfg, "fbank_mean"),
        fbank_std=require_setting(cfg, "fbank_std"),
        centre_in_place=cfg.centre_clips_in_place,
    )
