"""Pretraining the tiny frozen towers on the synthetic world's attributes, and probing what they learned.

Random frozen towers leave shape, position and motion at chance: a bridge cannot carry what its encoder does not
see. So each tiny tower is first trained, with a small probe head that is discarded afterwards, to predict what one
input shows (``encoder_corpus`` has the labels). The head reads the tower's output tokens after ``ln_vision`` /
``ln_audio``, which stay at their initialisation because no official file holds them: the probe sees exactly the
tokens the bridge will see. Heads are linear on purpose, so what they find is linearly present in those tokens.

* Vision: the mean token predicts shape, colour and the column and row bin of the centre; every patch token
  predicts whether the shape covers it. Half the samples are greyscale copies whose colour is not asked, so that
  shape has to be recognised without colour.
* Audio: every time step (the mean of a column of patch tokens) predicts how many beeps start in it and which sound
  is playing, and every token predicts how many beeps start in its segment. Onsets make the tower count rather
  than guess: a count read from a whole clip alone was guessed from its pitch and timbre, and failed on held-out
  (count, pitch, timbre) combinations. The per-token count then puts the result where the bridge can read it: a
  Q-Former query averages tokens, and an average of onset tokens loses the count, while an average of tokens that
  each carry their segment's count keeps it, as every token carries the pitch and timbre (with onsets alone the
  bridge answered counts 87-97 % right on new clips and 12.5 % on held-out combinations). Segments are shifted in
  time within their padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chatbridge.synthetic.encoder_corpus import (
    IGNORE,
    POSITION_BINS,
    SOUNDS,
    AudioCorpus,
    VisionCorpus,
)
from chatbridge.synthetic.items import COLOURS, COUNT_WORDS, DIRECTIONS, PITCHES, SHAPES, TIMBRES
from chatbridge.training.schedule import learning_rate

VISION_GROUPS = (len(SHAPES), len(COLOURS), POSITION_BINS, POSITION_BINS)
"""Logit groups of the vision probe's mean-token head: shape, colour, x bin, y bin."""
GREY_PROBABILITY = 0.5
"""Share of vision samples replaced by their greyscale copy (colour not asked)."""
MAX_ONSETS = 2
"""Onset classes per audio time step: 0, 1, 2 or more (beeps start 22 fbank frames apart, a step spans 16)."""
MAX_SEGMENT_BEEPS = 4
"""Beep-count classes per audio segment: 0 to 4 (a clip has at most four)."""
WARMUP_FRACTION = 0.05
MIN_LR_FRACTION = 0.1
WEIGHT_DECAY = 0.05
EVAL_BATCH = 128


class VisionProbe(nn.Module):
    """Linear heads on EVA tokens (N, 1 + G*G, D): attributes from the mean token, coverage per patch token."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.attributes = nn.Linear(width, sum(VISION_GROUPS))
        self.patches = nn.Linear(width, len(SHAPES) + 1)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(N, sum(VISION_GROUPS)) attribute logits and (N, G*G, shapes + 1) patch logits."""
        return self.attributes(tokens.mean(1)), self.patches(tokens[:, 1:])


class AudioProbe(nn.Module):
    """Linear heads on BEATs tokens: per time step, onsets starting there and the sound playing there; per token,
    the beeps starting in its segment."""

    def __init__(self, width: int, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.head = nn.Linear(width, MAX_ONSETS + 1 + 1 + len(SOUNDS))
        self.segment_beeps = nn.Linear(width, MAX_SEGMENT_BEEPS + 1)

    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """From (N, L = steps * F/p, D) tokens: (N, steps, MAX_ONSETS + 1) onset, (N, steps, 1 + sounds) sound and
        (N, L, MAX_SEGMENT_BEEPS + 1) segment-count logits."""
        columns = tokens.view(tokens.shape[0], self.steps, -1, tokens.shape[-1]).mean(2)  # time-major tokens
        logits = self.head(columns)
        return logits[..., : MAX_ONSETS + 1], logits[..., MAX_ONSETS + 1 :], self.segment_beeps(tokens)


# ----------------------------------------------------------------------------------------------- batches and losses


def vision_batch(corpus: VisionCorpus, indices: Tensor, generator: torch.Generator) -> tuple[Tensor, tuple]:
    """Pixels (B, 3, S, S), some replaced by their greyscale copy, and (labels, patch labels) targets."""
    grey = torch.rand(len(indices), generator=generator) < GREY_PROBABILITY
    pixels = torch.where(grey[:, None, None, None], corpus.grey_pixels[indices], corpus.pixels[indices])
    labels = corpus.labels[indices].clone()
    labels[grey, 1] = IGNORE  # a grey copy shows no colour
    return pixels, (labels, corpus.patch_labels[indices])


def vision_loss(outputs: tuple[Tensor, Tensor], targets: tuple[Tensor, Tensor]) -> Tensor:
    """Sum of the four attribute cross-entropies and the per-patch coverage cross-entropy."""
    (attribute_logits, patch_logits), (labels, patch_labels) = outputs, targets
    groups = attribute_logits.split(VISION_GROUPS, dim=-1)
    loss = sum(F.cross_entropy(logits, labels[:, k], ignore_index=IGNORE) for k, logits in enumerate(groups))
    return loss + F.cross_entropy(patch_logits.flatten(0, 1), patch_labels.flatten(), ignore_index=IGNORE)


def audio_targets(
    beeps: list[tuple[int, int]], sound: int, shift: int, length: int, patch: int
) -> tuple[Tensor, Tensor, Tensor]:
    """For one segment shifted by ``shift`` frames: per time step, onsets starting there (clamped to MAX_ONSETS) and
    the sound playing there (0: silence); and the beeps starting in the segment, a scalar."""
    onsets = torch.zeros(length // patch, dtype=torch.long)
    sounds = torch.zeros(length // patch, dtype=torch.long)
    for start, end in beeps:
        start, end = start + shift, end + shift
        if 0 <= start < length:
            onsets[start // patch] += 1
        sounds[max(start, 0) // patch : (min(end, length) - 1) // patch + 1] = sound
    return onsets.clamp(max=MAX_ONSETS), sounds, onsets.sum().clamp(max=MAX_SEGMENT_BEEPS)


def audio_batch(
    corpus: AudioCorpus, indices: Tensor, generator: torch.Generator, *, patch: int
) -> tuple[Tensor, tuple]:
    """Segments (B, T, F), each rolled by a random shift within its zero padding, and their step targets."""
    length = corpus.fbank.shape[1]
    slack = length - corpus.content[indices]  # (B,) frames of padding
    shifts = (torch.rand(len(indices), generator=generator) * (slack + 1)).long().tolist()
    fbank = torch.stack([torch.roll(corpus.fbank[i], s, 0) for i, s in zip(indices.tolist(), shifts, strict=True)])
    targets = [
        audio_targets(corpus.beeps[i], int(corpus.sounds[i]), s, length, patch)
        for i, s in zip(indices.tolist(), shifts, strict=True)
    ]
    return fbank, tuple(torch.stack(parts) for parts in zip(*targets, strict=True))


def audio_loss(outputs: tuple[Tensor, Tensor, Tensor], targets: tuple[Tensor, Tensor, Tensor]) -> Tensor:
    """Onset and sound cross-entropies over every time step, plus the segment-count cross-entropy over every token."""
    (onset_logits, sound_logits, count_logits), (onsets, sounds, counts) = outputs, targets
    counts = counts[:, None].expand(count_logits.shape[:2])  # every token of a segment has its segment's count
    return (
        F.cross_entropy(onset_logits.flatten(0, 1), onsets.flatten())
        + F.cross_entropy(sound_logits.flatten(0, 1), sounds.flatten())
        + F.cross_entropy(count_logits.flatten(0, 1), counts.flatten())
    )


# ----------------------------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Schedule:
    """How one tower is trained."""

    steps: int
    batch_size: int
    learning_rate: float


@dataclass(frozen=True)
class Objective:
    """What one tower learns: batches of (inputs, targets) drawn from ``size`` samples by index, and the loss of the
    probe's outputs against the targets."""

    size: int
    batch: Callable[[Tensor, torch.Generator], tuple[Tensor, tuple]]
    loss: Callable[[tuple, tuple], Tensor]


def vision_objective(corpus: VisionCorpus) -> Objective:
    return Objective(len(corpus.labels), partial(vision_batch, corpus), vision_loss)


def audio_objective(corpus: AudioCorpus, patch: int) -> Objective:
    return Objective(len(corpus.sounds), partial(audio_batch, corpus, patch=patch), audio_loss)


def train_tower(  # noqa: PLR0913 - the tower, its head and objective, the schedule, its random source, a callback
    tower: nn.Module,
    probe: nn.Module,
    objective: Objective,
    schedule: Schedule,
    generator: torch.Generator,
    on_step: Callable[[], object],
) -> None:
    """AdamW on the tower (its final LayerNorm excluded) and the probe; warmup + cosine; fp32; calls ``on_step``.

    Batches draw sample indices uniformly with replacement from ``generator``, which also drives augmentation.
    """
    parameters = [p for name, p in tower.named_parameters() if not name.startswith(("ln_vision.", "ln_audio."))]
    optimizer = torch.optim.AdamW([*parameters, *probe.parameters()], lr=schedule.learning_rate)
    for group in optimizer.param_groups:
        group["weight_decay"] = WEIGHT_DECAY
    warmup = max(1, round(WARMUP_FRACTION * schedule.steps))
    min_lr = MIN_LR_FRACTION * schedule.learning_rate
    tower.train()
    for step in range(schedule.steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, schedule.learning_rate, min_lr, 0.0, warmup, schedule.steps)
        indices = torch.randint(objective.size, (schedule.batch_size,), generator=generator)
        inputs, targets = objective.batch(indices, generator)
        loss = objective.loss(probe(tower(inputs)), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        on_step()
    tower.eval()


@torch.no_grad()
def _outputs(tower: nn.Module, probe: nn.Module, inputs: Tensor) -> tuple[Tensor, ...]:
    """The probe's outputs on every input, in evaluation batches, concatenated."""
    chunks = [probe(tower(inputs[start : start + EVAL_BATCH])) for start in range(0, len(inputs), EVAL_BATCH)]
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))


# ----------------------------------------------------------------------------------------------- probing


def _mean(values: Tensor) -> float:
    return round(float(values.float().mean()), 4)


def _direction_accuracy(corpus: VisionCorpus, bins: Tensor, frames: list[int]) -> float:
    """How often the predicted centre bins move the way the video moves between its first and last ``frames``."""
    first, last = {}, {}
    for index, (media_id, frame) in enumerate(corpus.media):
        if frame == frames[0]:
            first[media_id] = index
        elif frame == frames[-1]:
            last[media_id] = index
    correct = []
    for media_id, start in first.items():
        truth, moved = corpus.labels[last[media_id], 2:] - corpus.labels[start, 2:], bins[last[media_id]] - bins[start]
        axis = int(truth.abs().argmax())
        correct.append(int(moved.abs().argmax()) == axis and torch.sign(moved[axis]) == torch.sign(truth[axis]))
    return _mean(torch.tensor(correct))


def vision_probe_accuracy(tower: nn.Module, probe: VisionProbe, corpus: VisionCorpus, frames: list[int]) -> dict:
    """Probe accuracy per medium kind: shape, colour, position (both bins), patch coverage; and video direction
    read from the predicted positions of the first and last of ``frames`` (those the video processor evaluates)."""
    attribute_logits, patch_logits = _outputs(tower, probe, corpus.pixels)
    predicted = torch.stack([logits.argmax(-1) for logits in attribute_logits.split(VISION_GROUPS, -1)], dim=1)
    correct = predicted == corpus.labels  # (N, 4)
    patches = corpus.patch_labels != IGNORE  # (N, G*G) patches with a label
    patch_correct = (patch_logits.argmax(-1) == corpus.patch_labels) & patches
    report = {}
    for kind in ("image", "video"):
        rows = torch.tensor([k == kind for k in corpus.kinds])
        report[kind] = {
            "shape": _mean(correct[rows, 0]),
            "colour": _mean(correct[rows, 1]),
            "position": _mean(correct[rows, 2:].all(1)),
            "patches": _mean(patch_correct[rows].sum() / patches[rows].sum()),
        }
    report["video"]["direction"] = _direction_accuracy(corpus, predicted[:, 2:], frames)
    report["chance"] = {"shape": 1 / len(SHAPES), "colour": 1 / len(COLOURS), "position": 1 / POSITION_BINS**2}
    report["chance"]["direction"] = 1 / len(DIRECTIONS)
    return report


def audio_probe_accuracy(tower: nn.Module, probe: AudioProbe, corpus: AudioCorpus) -> dict:
    """Probe accuracy: pitch and timbre of segments with a beep (from the sound predicted where any sound is), the
    beep count of a segment (summed onsets, and read from each token), and the count of a clip summed over the
    segments evaluation keeps."""
    onset_logits, sound_logits, count_logits = _outputs(tower, probe, corpus.fbank)
    counts = onset_logits.argmax(-1).sum(1)  # (N,)
    sound = sound_logits.softmax(-1)[..., 1:].mean(1).argmax(-1)  # (N,) index into SOUNDS
    truth = corpus.sounds - 1
    has_beep = torch.tensor([len(beeps) > 0 for beeps in corpus.beeps])  # (N,) any beep heard
    pairs = [(SOUNDS[p], SOUNDS[t]) for p, t in zip(sound.tolist(), truth.tolist(), strict=True)]
    pitch_ok = torch.tensor([predicted[0] == actual[0] for predicted, actual in pairs])
    timbre_ok = torch.tensor([predicted[1] == actual[1] for predicted, actual in pairs])
    onsets_in = torch.tensor([sum(start >= 0 for start, _ in beeps) for beeps in corpus.beeps])
    clip_totals: dict[str, list[int]] = {}
    for (clip_id, count), predicted, kept in zip(corpus.clips, counts.tolist(), corpus.kept.tolist(), strict=True):
        clip_totals.setdefault(clip_id, [count, 0])[1] += predicted if kept else 0
    return {
        "pitch": _mean(pitch_ok[has_beep]),
        "timbre": _mean(timbre_ok[has_beep]),
        "segment_count": _mean(counts == onsets_in),
        "segment_count_per_token": _mean(count_logits.argmax(-1) == onsets_in.clamp(max=MAX_SEGMENT_BEEPS)[:, None]),
        "clip_count": round(float(np.mean([truth == total for truth, total in clip_totals.values()])), 4),
        "chance": {"pitch": 1 / len(PITCHES), "timbre": 1 / len(TIMBRES), "count": 1 / len(COUNT_WORDS)},
    }
