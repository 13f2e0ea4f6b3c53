"""Audio front end: Kaldi fbank, BEATs normalization, the reference's padding/segment rule
(docs/reference/chatbridge.md §1.4)."""

from __future__ import annotations

import math

import pytest
import torch
import torchaudio

from chatbridge.data.processors.fbank import (
    choose_from_groups,
    normalize_fbank,
    pad_length,
    resample,
    segment_fbank,
    split_into_groups,
    waveform_to_fbank,
)

SEGMENT = 1024
BEATS_MEAN, BEATS_STD = 15.41663, 6.55582
"""BEATs' AudioSet fbank statistics (no default any more: the encoder's config supplies them)."""


def _tone(seconds: float, sample_rate: int = 16000, channels: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate)) / sample_rate
    noise = 0.01 * torch.randn(channels, t.numel(), generator=torch.Generator().manual_seed(0))
    return 0.5 * torch.sin(2 * math.pi * 440 * t) + noise  # (channels, samples)


def _labelled_fbank(frames: int, bins: int = 4) -> torch.Tensor:
    """Row i holds i + 1 everywhere, so a segment reveals which frames it came from (padding stays 0)."""
    return (torch.arange(frames, dtype=torch.float32) + 1)[:, None].repeat(1, bins)


# --- fbank and normalization ----------------------------------------------------------------------------------


def test_fbank_shape_for_ten_seconds():
    fbank = waveform_to_fbank(_tone(10.0), 16000, 64)
    assert fbank.shape == (998, 64)  # 1 + (160000 - 400) // 160 frames


def test_fbank_uses_int16_scale_and_channel_zero():
    stereo = _tone(1.0, channels=2)
    stereo[1] = 0.0
    fbank = waveform_to_fbank(stereo, 16000, 64)
    unscaled = torchaudio.compliance.kaldi.fbank(stereo[:1], num_mel_bins=64)
    # Scaling samples by 2**15 scales power by 2**30: +30 ln 2 in log-mel, wherever the energy floor is not hit.
    torch.testing.assert_close(fbank - unscaled, torch.full_like(fbank, 30 * math.log(2)), rtol=0, atol=1e-3)


def test_normalization_against_hand_computed_values():
    fbank = torch.tensor([[15.41663, 15.41663 + 13.11164, 0.0, 2.30499]])
    expected = torch.tensor([[0.0, 1.0, -15.41663 / 13.11164, -1.0]])
    torch.testing.assert_close(normalize_fbank(fbank, BEATS_MEAN, BEATS_STD), expected)
    torch.testing.assert_close(normalize_fbank(torch.tensor([3.0]), mean=1.0, std=0.5), torch.tensor([2.0]))


def test_resample_matches_torchaudio_transform_and_skips_equal_rates():
    waveform = _tone(0.5, sample_rate=44100)
    expected = torchaudio.transforms.Resample(44100, 16000)(waveform)
    torch.testing.assert_close(resample(waveform, 44100, 16000), expected, rtol=0, atol=0)
    assert resample(waveform, 44100, 44100) is waveform


# --- padding and slicing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "segments", "faithful", "expected"),
    [
        (500, 1, True, 524),  # max(1024 - 500, 1024 - 500)
        (500, 2, True, 1548),  # max(2048 - 500, 524)
        (1500, 1, True, 548),  # max(-476, 1024 - 476)
        (2048, 1, True, 1024),  # exact multiple: a whole extra zero segment
        (2048, 1, False, 0),
        (2048, 3, False, 1024),
        (5110, 2, True, 10),
    ],
)
def test_pad_length_rule(frames, segments, faithful, expected):
    assert pad_length(frames, segments, SEGMENT, faithful) == expected


def test_short_clip_is_zero_padded_after_normalization():
    fbank = _labelled_fbank(500)
    (segment,) = segment_fbank(fbank, 1, SEGMENT, "middle", None, True)
    assert segment.shape == (SEGMENT, 4)
    torch.testing.assert_close(segment[:500], fbank)
    assert segment[500:].eq(0).all()


def test_short_clip_two_segments_are_the_clip_and_zeros():
    segments = segment_fbank(_labelled_fbank(500), 2, SEGMENT, "middle", None, True)
    assert segments.shape == (2, SEGMENT, 4)
    assert segments[0, 0, 0] == 1 and segments[1].eq(0).all()


def test_clip_of_1500_frames_has_two_slices_middle_takes_the_first():
    fbank = _labelled_fbank(1500)
    torch.testing.assert_close(segment_fbank(fbank, 1, SEGMENT, "middle", None, True)[0], fbank[:SEGMENT])
    picked = {
        int(segment_fbank(fbank, 1, SEGMENT, "random", torch.Generator().manual_seed(seed), True)[0, 0, 0])
        for seed in range(20)
    }
    assert picked == {1, SEGMENT + 1}  # first row of slice 0 or of slice 1


def test_exact_multiple_gets_extra_zero_segment_only_when_faithful():
    fbank = _labelled_fbank(2 * SEGMENT)
    faithful = segment_fbank(fbank, 3, SEGMENT, "middle", None, extra_segment_on_exact_multiple=True)
    assert faithful.shape == (3, SEGMENT, 4) and faithful[2].eq(0).all()
    # n = 1: the faithful rule has 3 slices (middle = slice 1), the fixed rule 2 (middle = slice 0).
    torch.testing.assert_close(segment_fbank(fbank, 1, SEGMENT, "middle", None, True)[0], fbank[SEGMENT:])
    fixed = segment_fbank(fbank, 1, SEGMENT, "middle", None, extra_segment_on_exact_multiple=False)
    torch.testing.assert_close(fixed[0], fbank[:SEGMENT])
    zero_picks = {
        flag: any(
            segment_fbank(fbank, 1, SEGMENT, "random", torch.Generator().manual_seed(seed), flag)[0].eq(0).all()
            for seed in range(30)
        )
        for flag in (True, False)
    }
    assert zero_picks == {True: True, False: False}


# --- grouping and choice --------------------------------------------------------------------------------------


def test_split_into_groups_hand_computed():
    assert split_into_groups([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]  # divmod(5, 2) = (2, 1)
    assert split_into_groups([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert split_into_groups([0], 2) == [[0], [0]]  # padded with the last element
    assert split_into_groups(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]


def test_middle_choice_hand_computed():
    assert choose_from_groups([[0, 1, 2], [3, 4]], "middle", None) == [1, 3]  # (3+1)//2-1 = 1, (2+1)//2-1 = 0
    assert choose_from_groups([[0, 1, 2, 3]], "middle", None) == [1]


def test_middle_mode_end_to_end_for_two_segments():
    fbank = _labelled_fbank(5 * SEGMENT - 10)  # 5 slices after padding: groups [0, 1, 2], [3, 4]
    segments = segment_fbank(fbank, 2, SEGMENT, "middle", None, True)
    torch.testing.assert_close(segments[0], fbank[SEGMENT : 2 * SEGMENT])
    torch.testing.assert_close(segments[1], fbank[3 * SEGMENT : 4 * SEGMENT])


def test_random_choice_is_seeded_and_stays_in_its_group():
    groups = split_into_groups(list(range(11)), 3)  # [[0..3], [4..7], [8..10]]
    first = choose_from_groups(groups, "random", torch.Generator().manual_seed(7))
    assert first == choose_from_groups(groups, "random", torch.Generator().manual_seed(7))
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        chosen = choose_from_groups(groups, "random", generator)
        assert all(index in group for index, group in zip(chosen, groups, strict=True))


def test_random_mode_requires_a_generator_and_mode_is_checked():
    with pytest.raises(ValueError, match="torch.Generator"):
        segment_fbank(_labelled_fbank(10), 1, SEGMENT, "random", None, True)
    with pytest.raises(ValueError, match="unknown segment mode 'first'"):
        choose_from_groups([[0]], "first", None)  # type: ignore[arg-type]
