"""ChatBind's stage 2 under FSDP: two gloo ranks with a sharded, fully trained LLM take the same step as one process
with the combined batch (the loop's own step function; FSDP's reduce-scatter averages the sharded gradients and
our all-reduce must not average them again)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from PIL import Image
from safetensors.torch import load_file, save_file
from torch.distributed.tensor import DTensor

from chatbridge.config_loading import load_config
from chatbridge.data.mixture import build_datasets, build_train_mixture
from chatbridge.models.llm import load_llm_tokenizer
from chatbridge.models.setup import build_model_for_training
from chatbridge.training.distributed import cleanup_distributed, setup_distributed, shard_model
from chatbridge.training.loop import _optimizer_step
from chatbridge.training.optim import build_optimizer

STAGE2_YAML = """
model:
  arch: chatbind
  model_type: tiny
  llm: {frozen: false}
  trainable: ["llm_proj.*", "token_rows.*", "llm.*"]
datasets:
  images:
    builder: llava_json
    modalities: [image]
    annotations: ANNOTATIONS
    image_root: IMAGES
run: {device: cpu, precision: fp32, seed: 0, init_lr: 1.0e-3, weight_decay: 0.0, grad_clip: 1.0, fsdp: true}
"""


def _write_data(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for index, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        Image.new("RGB", (36, 32), colour).save(root / "images" / f"{index}.png")
        question = {"from": "human", "value": "<image>\nWhat colour is it?"}
        rows.append(
            {"id": str(index), "image": f"{index}.png", "conversations": [question, {"from": "gpt", "value": colour}]}
        )
    (root / "chat.json").write_text(json.dumps(rows))
    config = STAGE2_YAML.replace("ANNOTATIONS", str(root / "chat.json")).replace("IMAGES", str(root / "images"))
    (root / "stage2.yaml").write_text(config)
    return root / "stage2.yaml"


def _one_step(rank: int, world_size: int, port: int, yaml: Path, options: list[str], output: Path) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    config = load_config(yaml, options)
    context = setup_distributed("cpu")
    torch.manual_seed(config.run.seed + context.rank)
    model = build_model_for_training(config.model)
    if world_size > 1:
        shard_model(model)
    tokenizer = load_llm_tokenizer(config.model.llm)
    mixture = build_train_mixture(config, build_datasets(config, tokenizer), tokenizer, context.rank, world_size)
    optimizer = build_optimizer(model, config.run.init_lr, config.run.weight_decay, False)
    _optimizer_step(model, optimizer, torch.amp.GradScaler(enabled=False), mixture, config, context)
    trained = {
        name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()  # every rank joins the gather
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    if context.is_main:
        save_file(trained, output)
    mixture.close()
    cleanup_distributed()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_gloo_ranks_with_fsdp_equal_one_rank_for_a_full_llm_step(tmp_path, tiny_llm_dir):
    yaml = _write_data(tmp_path)
    options = [f"model.llm.path={tiny_llm_dir}", "model.encoders.imagebind.checkpoint=null"]
    parallel, single = tmp_path / "parallel.safetensors", tmp_path / "single.safetensors"
    halves = [*options, "datasets.images.batch_size=2"]
    mp.start_processes(_one_step, args=(2, _free_port(), yaml, halves, parallel), nprocs=2, start_method="spawn")
    _one_step(0, 1, _free_port(), yaml, [*options, "datasets.images.batch_size=4"], single)
    sharded, combined = load_file(parallel), load_file(single)
    assert sharded.keys() == combined.keys() and any(name.startswith("llm.model.layers") for name in combined)
    for name in combined:
        torch.testing.assert_close(sharded[name], combined[name], rtol=0, atol=1e-5)


def _train_and_resume(rank: int, world_size: int, port: int, yaml: Path, options: list[str], root: Path) -> None:
    """The loop itself with FSDP over a fully trained LLM: 3 steps with a checkpoint after 2, then a resume."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    from chatbridge.training.loop import train

    # One process group for both runs: `train` joins it and leaves it to us (creating a second group on the same
    # port right after destroying the first raced and hung in gloo).
    torch.distributed.init_process_group("gloo")
    steps = ["run.max_steps=3", "run.checkpoint_every=2", "run.keep_last=3", "run.log_every=1"]
    full = train(load_config(yaml, [*options, *steps, f"run.output_dir={root / 'full'}"]))
    if rank == 0:
        (root / "resumed" / "checkpoints").mkdir(parents=True)
        import shutil

        shutil.copytree(
            full.output_dir / "checkpoints" / "step_0000002", root / "resumed" / "checkpoints" / "step_0000002"
        )
    torch.distributed.barrier()
    resumed = train(load_config(yaml, [*options, *steps, f"run.output_dir={root / 'resumed'}", "run.resume=auto"]))
    if rank == 0:
        (root / "losses.json").write_text(json.dumps({"full": full.losses, "resumed": resumed.losses}))
    cleanup_distributed()


def test_a_sharded_full_llm_run_checkpoints_and_resumes_exactly(tmp_path, tiny_llm_dir):
    yaml = _write_data(tmp_path)
    options = [
        f"model.llm.path={tiny_llm_dir}",
        "model.encoders.imagebind.checkpoint=null",
        "datasets.images.batch_size=2",
    ]
    mp.start_processes(
        _train_and_resume, args=(2, _free_port(), yaml, options, tmp_path), nprocs=2, start_method="spawn"
    )
    losses = json.loads((tmp_path / "losses.json").read_text())
    assert losses["resumed"] == losses["full"][2:]  # the gathered checkpoint restores sharded weights and AdamW
    full = load_file(tmp_path / "full" / "final" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    assert any(name.startswith("llm.model.layers") for name in full)
    for name in full:
        assert torch.equal(full[name], resumed[name]), name
