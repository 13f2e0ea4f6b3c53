"""Training building blocks: schedule numbers, weight-decay groups, atomic checkpoints and their pruning."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from chatbridge.config import TrainConfig
from chatbridge.errors import UserError
from chatbridge.training import checkpoint as ckpt
from chatbridge.training.optim import parameter_groups
from chatbridge.training.schedule import learning_rate

STAGE1 = {"init_lr": 1e-4, "min_lr": 1e-5, "warmup_lr": 1e-6, "warmup_steps": 5000, "max_steps": 200_000}


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (0, 1e-6),
        (2500, 1e-6 + (1e-4 - 1e-6) * 0.5),  # half-way through the linear warmup
        (5000, 1e-5 + 9e-5 * 0.5 * (1 + math.cos(math.pi * 5000 / 200_000))),  # cosine counts from step 0
        (100_000, 1e-5 + 9e-5 * 0.5),
        (200_000, 1e-5),
        (250_000, 1e-5),
    ],
)
def test_stage1_schedule_matches_the_reference_formula(step, expected):
    assert learning_rate(step, **STAGE1) == pytest.approx(expected, rel=1e-12)


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.query_tokens = nn.Parameter(torch.zeros(1, 2, 4))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_no_decay_on_biases_norms_and_queries():
    toy = Toy()
    names = {id(p): n for n, p in toy.named_parameters()}
    decay, no_decay = parameter_groups(toy, weight_decay=0.05, decay_everything=False)
    assert [names[id(p)] for p in decay["params"]] == ["proj.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == ["norm.bias", "norm.weight", "proj.bias", "query_tokens"]
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)


def test_faithful_decay_covers_every_trainable_tensor():
    toy = Toy()
    decay, no_decay = parameter_groups(toy, weight_decay=0.05, decay_everything=True)
    assert len(decay["params"]) == 5 and no_decay["params"] == []


def complete_checkpoint(output_dir, step: int):
    """A folder that passes verification: the two files every checkpoint has, and its manifest."""
    folder = ckpt.checkpoint_dir(output_dir, step)
    folder.mkdir(parents=True)
    (folder / ckpt.STATE_FILE).write_bytes(b"state")
    (folder / "model.safetensors").write_bytes(b"weights")
    ckpt.write_manifest(folder)
    return folder


def test_checkpoints_are_pruned_to_the_last_k_and_tmp_folders_are_never_resumed(tmp_path):
    for step in (10, 20, 30):
        complete_checkpoint(tmp_path, step)
    ckpt.checkpoint_dir(tmp_path, 40).with_name("step_0000040.tmp").mkdir()  # a crash mid-write
    assert ckpt.find_resume_checkpoint("auto", tmp_path).name == "step_0000030"
    ckpt.prune_checkpoints(tmp_path, keep_last=2)
    assert [p.name for p in sorted((tmp_path / "checkpoints").iterdir())] == ["step_0000020", "step_0000030"]


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda f: (f / "model.safetensors").write_bytes(b"weig"), "model.safetensors has 4 bytes, not 7 (truncated?)"),
        (lambda f: (f / ckpt.STATE_FILE).write_bytes(b"STATE"), "training_state.pt does not match its checksum"),
        (lambda f: (f / ckpt.MANIFEST_FILE).unlink(), "no readable manifest.json"),
        (lambda f: (f / ckpt.STATE_FILE).unlink(), "training_state.pt is missing"),
    ],
    ids=["truncated", "changed", "no-manifest", "missing-file"],
)
def test_resume_skips_a_damaged_newest_checkpoint_and_says_why(tmp_path, caplog, damage, reason):
    complete_checkpoint(tmp_path, 10)
    damage(complete_checkpoint(tmp_path, 20))
    (tmp_path / "checkpoints" / "step_0000999").mkdir()  # an empty or foreign folder with a checkpoint's name
    with caplog.at_level("WARNING"):
        assert ckpt.find_resume_checkpoint("auto", tmp_path).name == "step_0000010"
    assert f"skipping {ckpt.checkpoint_dir(tmp_path, 20)}: {reason}" in caplog.text
    assert "step_0000999: no readable manifest.json" in caplog.text


def test_resume_auto_without_checkpoints_starts_fresh_and_says_so_and_a_bad_path_is_named(tmp_path, caplog):
    with caplog.at_level("INFO"):
        assert ckpt.find_resume_checkpoint("auto", tmp_path) is None
    assert "no complete checkpoint in" in caplog.text and "starting from step 0" in caplog.text
    assert ckpt.find_resume_checkpoint(None, tmp_path) is None
    with pytest.raises(UserError, match="run.resume: .*nowhere is not a complete training checkpoint: no readable"):
        ckpt.find_resume_checkpoint(str(tmp_path / "nowhere"), tmp_path)


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_names_the_folder(tmp_path, monkeypatch):
    import errno

    previous = complete_checkpoint(tmp_path, 10)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    model = nn.Linear(2, 2)
    target = ckpt.checkpoint_dir(tmp_path, 20)
    with pytest.raises(UserError, match=rf"could not write checkpoint {target}: No space left on device"):
        ckpt.save_training_checkpoint(target, dict(model.state_dict()), TrainConfig(), {"step": 20})
    assert not target.exists() and not target.with_name(target.name + ".tmp").exists()
    assert ckpt.why_incomplete(previous) is None
    assert ckpt.find_resume_checkpoint("auto", tmp_path) == previous


def test_rng_state_round_trips_through_weights_only_loading(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3)
    random.seed(3)
    np.random.seed(3)
    torch.save(ckpt.capture_rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    ckpt.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]
