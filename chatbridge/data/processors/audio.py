"""Audio preprocessing: an audio file, or a video's audio track -> (n, target_length, F) BEATs fbank segments.

The recipe is the reference's (docs/reference/chatbridge.md §1.4): decode -> channel 0 -> resample to 16 kHz ->
Kaldi fbank (64 bins for the released weights) -> BEATs normalisation -> zero-pad and slice into 1024-frame
segments, one random segment per group in training and the middle one at evaluation. The tensor maths lives in
`fbank.py`; this module owns decoding and bad-input handling. Unlike the reference, a missing or broken file raises
`MediaError` instead of silently becoming an all-zero spectrogram (§7.3).

Decoding: libsndfile (via soundfile) reads WAV, FLAC, OGG and MP3 (libsndfile >= 1.1) at their native rate and
the shared sinc resampler brings them to `sample_rate`. Anything libsndfile rejects (MP4, MKV, M4A...) goes to
FFmpeg through decord's `AudioReader`, which cannot report a file's native rate, so FFmpeg resamples it
(swresample) to `sample_rate` while decoding; those features differ slightly from torchaudio's resampler.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import decord
import soundfile
import torch

from chatbridge.config import ProcessorConfig
from chatbridge.data.processors.errors import MediaError, decoding, require_file, require_setting
from chatbridge.data.processors.fbank import normalize_fbank, resample, segment_fbank, waveform_to_fbank
from chatbridge.registry import PROCESSORS

FBANK_WINDOW_MS = 25
"""Kaldi window of `waveform_to_fbank`; a clip shorter than one window has no fbank frame at all."""
DECORD_NO_AUDIO = "Can't find audio stream"
"""decord's message for a video without an audio track (pinned by a test, as decord has no typed error)."""
AudioSource = str | os.PathLike | BinaryIO
"""An audio (or video) file, or an open binary stream of one."""


def decode_audio(path: Path | BinaryIO, sample_rate: int, max_seconds: float | None = None) -> tuple[torch.Tensor, int]:
    """Decodes every channel of `path` -> ((C, S) float32 in [-1, 1], its sample rate).

    Raises:
        MediaError: "empty" for a video without an audio track, "undecodable" when neither decoder can read it.
    """
    try:
        if max_seconds is not None:
            _refuse_long(soundfile.info(path).duration, max_seconds, path)
            if hasattr(path, "seek"):
                path.seek(0)
        samples, file_rate = soundfile.read(path, dtype="float32", always_2d=True)  # (S, C)
        return torch.from_numpy(samples.T.copy()), file_rate
    except soundfile.SoundFileError:
        pass  # not a format libsndfile reads (or corrupt): FFmpeg gets a chance, and reports the failure
    if hasattr(path, "seek"):
        path.seek(0)
    with decoding(path):
        try:
            reader = decord.AudioReader(
                str(path) if isinstance(path, Path) else path, sample_rate=sample_rate, mono=False
            )
        except decord.DECORDError as error:
            if DECORD_NO_AUDIO in str(error):
                raise MediaError("empty", path, "no audio track") from error
            raise
        if max_seconds is not None:
            _refuse_long(reader.duration(), max_seconds, path)
        return torch.from_numpy(reader[:].asnumpy()), sample_rate  # (C, S)


def _refuse_long(seconds: float, max_seconds: float, path: Path | BinaryIO) -> None:
    if seconds > max_seconds:
        detail = f"{seconds:.0f} s, over processor.max_audio_seconds = {max_seconds:g}"
        raise MediaError("too_large", path if isinstance(path, Path) else "audio stream", detail)


class AudioProcessor:
    """Audio file (or video with an audio track) -> (num_segments, target_length, num_mel_bins) float32.

    Args:
        sample_rate: Rate the fbank is computed at (16 kHz for BEATs).
        num_mel_bins: Mel bins (64 for the released ChatBridge weights).
        target_length: Fbank frames per segment (1024 = 10.24 s).
        num_segments: Segments per clip (n).
        extra_segment_on_exact_multiple: The reference's extra all-zero segment when the clip's frame count is an
            exact multiple of `target_length` (see `fbank.pad_length`).
        fbank_mean: Normalisation mean (BEATs AudioSet statistics).
        fbank_std: Normalisation std (divided by 2 * std, as BEATs does).
    """

    def __init__(  # noqa: PLR0913 - the recipe's settings, one argument each
        self,
        sample_rate: int,
        num_mel_bins: int,
        target_length: int,
        num_segments: int,
        extra_segment_on_exact_multiple: bool,
        fbank_mean: float,
        fbank_std: float,
        max_seconds: float | None = None,
    ) -> None:
        if min(sample_rate, num_mel_bins, target_length, num_segments) < 1:
            raise ValueError(
                f"sample_rate, num_mel_bins, target_length and num_segments must be positive, got "
                f"{sample_rate}, {num_mel_bins}, {target_length}, {num_segments}"
            )
        self.sample_rate = sample_rate
        self.num_mel_bins = num_mel_bins
        self.target_length = target_length
        self.num_segments = num_segments
        self.extra_segment_on_exact_multiple = extra_segment_on_exact_multiple
        self.fbank_mean = fbank_mean
        self.fbank_std = fbank_std
        self.max_seconds = max_seconds

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of one output: (n, target_length, num_mel_bins)."""
        return (self.num_segments, self.target_length, self.num_mel_bins)

    def __call__(
        self, audio: AudioSource, train: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Decodes and featurises `audio`; `train` picks random segments, which needs `generator`.

        Raises:
            MediaError: "missing", "empty" (zero bytes, zero samples, no audio track), "undecodable",
                "non_finite" (NaN/inf samples) or "too_short" (less than one 25 ms window at `sample_rate`).
        """
        waveform = self.load_waveform(audio)  # (1, S) at self.sample_rate
        fbank = normalize_fbank(
            waveform_to_fbank(waveform, self.sample_rate, self.num_mel_bins), self.fbank_mean, self.fbank_std
        )
        return segment_fbank(
            fbank,
            self.num_segments,
            self.target_length,
            "random" if train else "middle",
            generator,
            self.extra_segment_on_exact_multiple,
        )

    def load_waveform(self, audio: AudioSource) -> torch.Tensor:
        """Decodes channel 0 of `audio` at `sample_rate` -> (1, S), rejecting input that has no fbank frame."""
        path = require_file(audio) if isinstance(audio, str | os.PathLike) else audio
        waveform, file_rate = decode_audio(path, self.sample_rate, self.max_seconds)
        if waveform.numel() == 0:
            raise MediaError("empty", path, "no audio samples")
        if not torch.isfinite(waveform).all():
            raise MediaError("non_finite", path, "NaN or infinite samples")
        # Kaldi's fbank reads channel 0 only (the reference never down-mixes); drop the rest before resampling.
        waveform = resample(waveform[:1], file_rate, self.sample_rate)
        min_samples = self.sample_rate * FBANK_WINDOW_MS // 1000
        if waveform.shape[-1] < min_samples:
            raise MediaError("too_short", path, f"{waveform.shape[-1]} samples < one {FBANK_WINDOW_MS} ms window")
        return waveform


@PROCESSORS.register("beats_fbank")
def build_beats_fbank(cfg: ProcessorConfig) -> AudioProcessor:
    """BEATs fbank segments at the encoder's rate, bins and statistics."""
    return AudioProcessor(
        sample_rate=require_setting(cfg, "sample_rate"),
        num_mel_bins=require_setting(cfg, "num_mel_bins"),
        target_length=cfg.target_length,
        num_segments=cfg.num_audio_segments,
        extra_segment_on_exact_multiple=cfg.extra_segment_on_exact_multiple,
        fbank_mean=require_setting(cfg, "fbank_mean"),
        fbank_std=require_setting(cfg, "fbank_std"),
        max_seconds=cfg.max_audio_seconds,
    )
