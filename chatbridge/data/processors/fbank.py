"""The audio front end of ChatBridge as pure tensor functions: waveform -> Kaldi fbank -> normalized segments.

It reproduces the reference recipe (docs/reference/chatbridge.md §1.4, steps 2-7; VALOR's `AudioMapper` and the demo's
`BlipAudioEvalProcessor`) so that features match what the released weights were trained on, including two quirks:
padded frames are zeros in *normalized* space, and a clip whose length is an exact multiple of the segment length
gets one extra all-zero segment (`extra_segment_on_exact_multiple=True`; `False` is the fixed variant).

Decoding files is the caller's job; randomness comes only from an explicit `torch.Generator`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor

SegmentMode = Literal["random", "middle"]


def waveform_to_fbank(waveform: Tensor, sample_rate: int, num_mel_bins: int) -> Tensor:
    """Kaldi log-mel filter bank of channel 0, as BEATs computes it.

    Args:
        waveform: (channels, samples) float audio in [-1, 1]; only channel 0 is used (Kaldi's choice; the
            reference never down-mixes).
        sample_rate: sampling rate of `waveform` (the reference always resamples to 16 kHz first).
        num_mel_bins: mel bins; 64 for the released ChatBridge weights.

    Returns:
        (T, num_mel_bins) fbank, 25 ms windows every 10 ms (~100 frames per second) with all other Kaldi
        defaults (Povey window, pre-emphasis 0.97, DC removal, dither 0, snip edges).
    """
    # BEATs was trained on int16-scaled samples.
    return torchaudio.compliance.kaldi.fbank(
        waveform * 2**15,
        num_mel_bins=num_mel_bins,
        sample_frequency=sample_rate,
        frame_length=25,
        frame_shift=10,
    )


def normalize_fbank(fbank: Tensor, mean: float, std: float) -> Tensor:
    """BEATs' AudioSet normalization `(x - mean) / (2 * std)`; the factor 2 on the std is upstream's."""
    return (fbank - mean) / (std * 2)


@lru_cache(maxsize=8)
def _resampler(orig_sr: int, new_sr: int) -> torchaudio.transforms.Resample:
    # The windowed-sinc kernel depends only on the rate pair; the reference rebuilt it for every file.
    return torchaudio.transforms.Resample(orig_sr, new_sr)


def resample(waveform: Tensor, orig_sr: int, new_sr: int) -> Tensor:
    """Resample (..., samples) with torchaudio's default windowed sinc, as the reference did, caching kernels."""
    if orig_sr == new_sr:
        return waveform
    return _resampler(orig_sr, new_sr)(waveform)


def pad_length(num_frames: int, num_segments: int, target_length: int, extra_segment_on_exact_multiple: bool) -> int:
    """Zero frames appended before slicing, so that the total is a multiple of `target_length`.

    The reference uses `max(L * n - T, L - T mod L)`: at least `n` slices, and a whole extra zero slice when `T`
    is already a multiple of `L`. The fixed variant pads only to the next multiple.
    """
    to_multiple = target_length - num_frames % target_length
    if not extra_segment_on_exact_multiple:
        to_multiple %= target_length
    return max(target_length * num_segments - num_frames, to_multiple)


def split_into_groups(items: list[int], num_groups: int) -> list[list[int]]:
    """VALOR's `split`: `num_groups` contiguous near-equal groups (the first `len % n` get one extra item).

    A list shorter than `num_groups` is first padded with its last element, so every group is non-empty.
    """
    if not items:
        raise ValueError("cannot split an empty list into groups")
    items = items + [items[-1]] * (num_groups - len(items))
    size, extra = divmod(len(items), num_groups)
    return [items[i * size + min(i, extra) : (i + 1) * size + min(i + 1, extra)] for i in range(num_groups)]


def choose_from_groups(groups: list[list[int]], mode: SegmentMode, generator: torch.Generator | None) -> list[int]:
    """One element per group: uniform at random (training) or the middle one, `(len + 1) // 2 - 1` (evaluation)."""
    if mode == "middle":
        return [group[(len(group) + 1) // 2 - 1] for group in groups]
    if mode != "random":
        raise ValueError(f"unknown segment mode {mode!r}; known: 'random', 'middle'")
    if generator is None:
        raise ValueError("mode 'random' needs an explicit torch.Generator (no global RNG)")
    return [group[int(torch.randint(len(group), (), generator=generator))] for group in groups]


def segment_fbank(
    fbank: Tensor,
    num_segments: int,
    target_length: int,
    mode: SegmentMode,
    generator: torch.Generator | None,
    extra_segment_on_exact_multiple: bool,
) -> Tensor:
    """Zero-pad a normalized fbank, cut it into `target_length` slices and keep one slice per group.

    Args:
        fbank: (T, F) normalized fbank; padding happens after normalization, as in the reference.
        num_segments: segments n to return (`sample_num` in the reference).
        target_length: frames per segment (1024 = 10.24 s).
        mode: "random" (training) or "middle" (evaluation and demo).
        generator: source of randomness for mode "random".
        extra_segment_on_exact_multiple: the reference's extra all-zero slice when T is a multiple of the length.

    Returns:
        (num_segments, target_length, F) segments.
    """
    pad = pad_length(fbank.shape[0], num_segments, target_length, extra_segment_on_exact_multiple)
    padded = F.pad(fbank, (0, 0, 0, pad))
    groups = split_into_groups(list(range(padded.shape[0] // target_length)), num_segments)
    chosen = choose_from_groups(groups, mode, generator)
    return torch.stack([padded[i * target_length : (i + 1) * target_length] for i in chosen])
