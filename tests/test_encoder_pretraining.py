"""The tiny towers' pretraining targets and losses, against hand-computed values."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from chatbridge.synthetic.encoder_corpus import SOUNDS
from chatbridge.synthetic.encoder_pretraining import (
    MAX_ONSETS,
    MAX_SEGMENT_BEEPS,
    AudioProbe,
    audio_loss,
    audio_targets,
)

LENGTH, PATCH = 160, 16  # ten 16-frame time steps


def test_audio_targets_count_onsets_inside_the_segment_only() -> None:
    # A beep that began in the previous segment (start < 0) sounds in step 0 but is not counted again.
    beeps = [(-5, 14), (20, 39), (42, 61)]
    onsets, sounds, count = audio_targets(beeps, sound=3, shift=0, length=LENGTH, patch=PATCH)
    assert onsets.tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]
    assert sounds.tolist() == [3, 3, 3, 3, 0, 0, 0, 0, 0, 0]
    assert int(count) == 2


def test_audio_targets_follow_the_shift() -> None:
    onsets, sounds, count = audio_targets([(-5, 14), (20, 39), (42, 61)], sound=2, shift=10, length=LENGTH, patch=PATCH)
    assert onsets.tolist() == [1, 1, 0, 1, 0, 0, 0, 0, 0, 0]  # starts 5, 30, 52
    assert sounds.tolist() == [2, 2, 2, 2, 2, 0, 0, 0, 0, 0]
    assert int(count) == 3


def test_audio_targets_clamp_onsets_per_step_but_count_them_all() -> None:
    onsets, _, count = audio_targets([(0, 5), (3, 8), (6, 9)], sound=1, shift=0, length=LENGTH, patch=PATCH)
    assert onsets.tolist()[0] == MAX_ONSETS == 2 and int(count) == 3


def test_every_token_answers_its_segments_count() -> None:
    """Logits right by a margin of 20 everywhere give a loss near 0; the count wrong by 20 on every token of one of
    two segments adds 20 averaged over half the tokens: 10."""
    steps, frequency_patches, width = 10, 2, 8
    probe = AudioProbe(width, steps)
    tokens = torch.randn(2, steps * frequency_patches, width)
    onset_logits, sound_logits, count_logits = (torch.zeros_like(out) for out in probe(tokens))
    assert count_logits.shape == (2, steps * frequency_patches, MAX_SEGMENT_BEEPS + 1)
    assert sound_logits.shape == (2, steps, 1 + len(SOUNDS)) and onset_logits.shape == (2, steps, MAX_ONSETS + 1)
    onsets = torch.tensor([[0, 1, 0, 0, 0, 1, 0, 0, 0, 0], [0] * steps])
    sounds = torch.tensor([[0, 1, 1, 0, 0, 1, 1, 0, 0, 0], [0] * steps])
    counts = torch.tensor([2, 0])
    right = (
        20 * F.one_hot(onsets, MAX_ONSETS + 1).float(),
        20 * F.one_hot(sounds, 1 + len(SOUNDS)).float(),
        20 * F.one_hot(counts[:, None].expand(-1, count_logits.shape[1]), MAX_SEGMENT_BEEPS + 1).float(),
    )
    assert float(audio_loss(right, (onsets, sounds, counts))) < 1e-6
    wrong_count = right[2].clone()
    wrong_count[0] = 20 * F.one_hot(torch.full((count_logits.shape[1],), 1), MAX_SEGMENT_BEEPS + 1).float()
    loss = audio_loss((right[0], right[1], wrong_count), (onsets, sounds, counts))
    assert abs(float(loss) - 10.0) < 1e-3
