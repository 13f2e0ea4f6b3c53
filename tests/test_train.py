"""The training loop end to end on the tiny preset: resume exactness, data parallelism, checkpoints that load back."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from chatbridge.config import TrainConfig
from chatbridge.config_loading import load_config
from chatbridge.data.mixture import build_datasets, build_train_mixture
from chatbridge.models.llm import load_tokenizer
from chatbridge.models.setup import build_model_for_training
from chatbridge.synthetic import prepare
from chatbridge.training.loop import train
from tests.tiny_sizes import SMALL

REPO = Path(__file__).resolve().parents[1]
STAGE1 = REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml"


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """One synthetic world and the preset's tiny LLM (which knows the world's language) for the module."""
    root = tmp_path_factory.mktemp("train")
    shared = {"root": root, "world": root / "world", "llm": root / "llm"}
    prepare(tiny_config(shared, "prepare"))
    return shared


def tiny_config(shared: dict[str, Path], output: str, *options: str) -> TrainConfig:
    """The shipped tiny stage-1 YAML at plumbing-test sizes, every generated file in the module's temp folder."""
    defaults = [
        *SMALL,
        f"synthetic.world={shared['world']}",
        f"model.llm.path={shared['llm']}",
        f"run.output_dir={shared['root'] / output}",
        "run.max_steps=6",
        "run.warmup_steps=2",
        "run.checkpoint_every=3",
        "run.keep_last=5",
        "run.log_every=1",
    ]
    return load_config(STAGE1, [*defaults, *options])


def test_the_shipped_tiny_preset_trains_through_its_official_checkpoints(shared):
    """The preset as shipped (sizes, temporal embeddings, feature cache): its stand-in towers are pretrained (briefly
    here) and written in EVA's and BEATs' official formats, loaded back by the real loaders, and a step trains."""
    options = [
        f"synthetic.world={shared['world']}",
        f"model.llm.path={shared['root'] / 'shipped_llm'}",
        f"model.encoders.vision.checkpoint={shared['root'] / 'eva_vit_g.pth'}",
        f"model.encoders.audio.checkpoint={shared['root'] / 'beats.pt'}",
        f"run.feature_cache={shared['root'] / 'features'}",
        f"run.output_dir={shared['root'] / 'shipped'}",
        "synthetic.tiny_llm.pretrain_steps=5",
        "synthetic.tiny_encoders.vision_steps=2",
        "synthetic.tiny_encoders.audio_steps=2",
        "run.max_steps=2",
        "run.warmup_steps=1",
        "run.checkpoint_every=0",
    ]
    config = load_config(STAGE1, options)
    prepare(config)
    assert (shared["root"] / "eva_vit_g.pth").is_file() and (shared["root"] / "beats.pt").is_file()
    result = train(config)
    assert len(result.losses) == 2 and all(math.isfinite(loss) for loss in result.losses)
    assert any((shared["root"] / "features").rglob("*.safetensors"))  # images and frames were cached


def metric_losses(result) -> list[float]:
    return [json.loads(line)["loss"] for line in result.metrics_file.read_text().splitlines()]


def test_resumed_run_reproduces_the_uninterrupted_losses_exactly(shared):
    full = train(tiny_config(shared, "full"))
    assert len(full.losses) == 6 and metric_losses(full) == pytest.approx(full.losses, rel=1e-6)
    interrupted = shared["root"] / "interrupted"
    (interrupted / "checkpoints").mkdir(parents=True)  # as if killed right after the step-3 checkpoint
    shutil.copytree(full.output_dir / "checkpoints" / "step_0000003", interrupted / "checkpoints" / "step_0000003")
    resumed = train(tiny_config(shared, "interrupted", "run.resume=auto", "run.num_workers=2"))
    assert resumed.losses == full.losses[3:]  # bit for bit, with data loading moved to two workers
    final_full = load_file(full.final_checkpoint / "model.safetensors")
    final_resumed = load_file(resumed.final_checkpoint / "model.safetensors")
    assert all(torch.equal(final_full[name], final_resumed[name]) for name in final_full)


def test_checkpoint_loads_back_into_a_fresh_model_with_identical_outputs(shared):
    result = train(tiny_config(shared, "reload", "run.max_steps=2", "run.checkpoint_every=0"))
    config = tiny_config(shared, "reload")
    fresh = build_model_for_training(dataclasses.replace(config.model, checkpoint=str(result.final_checkpoint)))
    tokenizer = load_tokenizer(config.model.llm.path)
    mixture = build_train_mixture(config, build_datasets(config, tokenizer), tokenizer, rank=0, world_size=1)
    _, [batch] = next(mixture)
    result.model.eval(), fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(batch).token_losses, result.model(batch).token_losses, rtol=0, atol=0)


def test_resume_refuses_a_checkpoint_of_another_architecture(shared):
    train(tiny_config(shared, "other_arch", "run.max_steps=1", "run.warmup_steps=0", "run.checkpoint_every=0"))
    config = tiny_config(shared, "other_arch", "run.resume=auto", "model.connector.num_query_tokens=8")
    with pytest.raises(ValueError, match="was written by another architecture or trainable set"):
        train(config)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_rank(  # noqa: PLR0913 - torch.multiprocessing passes the rank first, then these
    rank: int, world_size: int, port: int, output: str, options: list[str], shared: dict[str, Path]
) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    train(tiny_config(shared, output, *options))


@pytest.mark.parametrize("fsdp", [False, True], ids=["replicated-llm", "fsdp-sharded-llm"])
def test_two_process_gloo_equals_one_process_with_the_combined_batch(shared, fsdp):
    steps = ["run.max_steps=3", "run.checkpoint_every=0", "run.grad_clip=null", f"run.fsdp={str(fsdp).lower()}"]
    halves = [f"datasets.{name}.batch_size=2" for name in ("image_captions", "video_captions", "audio_captions")]
    mp.start_processes(
        _train_rank,
        args=(2, _free_port(), f"ddp_{fsdp}", steps + halves, shared),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    doubled = [option.replace("=2", "=4") for option in halves]
    torch.set_num_threads(1)
    single = train(tiny_config(shared, f"single_{fsdp}", *steps, *doubled))
    parallel = load_file(shared["root"] / f"ddp_{fsdp}" / "final" / "model.safetensors")
    combined = load_file(single.final_checkpoint / "model.safetensors")
    assert parallel.keys() == combined.keys()
    for name in combined:
        torch.testing.assert_close(parallel[name], combined[name], rtol=0, atol=1e-5)


def test_a_tiny_run_learns(shared):
    """With the tiny LLM that knows the world's language (the preset's), 60 stage-1 steps lower the caption loss."""
    result = train(tiny_config(shared, "learns", "run.max_steps=60", "run.checkpoint_every=0", "run.log_every=10"))
    first, last = sum(result.losses[:10]) / 10, sum(result.losses[-10:]) / 10
    assert last < 0.8 * first, (first, last)


def test_a_corrupt_newest_checkpoint_resumes_from_the_previous_and_logs_each_step_once(shared, caplog):
    full = train(tiny_config(shared, "corrupt"))
    newest = full.output_dir / "checkpoints" / "step_0000006" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a crash during a copy
    with caplog.at_level("WARNING"):
        resumed = train(tiny_config(shared, "corrupt", "run.resume=auto"))
    assert "skipping" in caplog.text and "step_0000006: model.safetensors has 100 bytes" in caplog.text
    assert resumed.losses == full.losses[3:]  # from step 3, the newest complete checkpoint
    steps = [json.loads(line)["step"] for line in resumed.metrics_file.read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]  # the replayed steps 4-6 are logged once


def test_gradient_accumulation_equals_the_combined_batch_with_clipping(shared):
    steps = ["run.max_steps=3", "run.checkpoint_every=0", "run.grad_clip=0.5"]
    names = ("image_captions", "video_captions", "audio_captions")
    accumulated = train(
        tiny_config(
            shared, "accumulate", *steps, "run.grad_accum_steps=2", *(f"datasets.{name}.batch_size=2" for name in names)
        )
    )
    combined = train(tiny_config(shared, "combined", *steps, *(f"datasets.{name}.batch_size=4" for name in names)))
    assert accumulated.losses == pytest.approx(combined.losses, rel=1e-6)
    ours, theirs = (load_file(r.final_checkpoint / "model.safetensors") for r in (accumulated, combined))
    for name in theirs:
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=1e-6)
