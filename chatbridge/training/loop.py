"""The one training loop, for both stages: a stage is config data (trainable set, data mixture, schedule).

Read top to bottom: 1. setup (distributed, seed, output folder); 2. build (model, data, optimizer, resume);
3. the steps (batch -> autocast forward -> backward -> clip -> step -> log -> checkpoint); 4. cleanup.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from chatbridge.config import TrainConfig
from chatbridge.config_loading import save_config
from chatbridge.data.mixture import MixtureLoader, build_datasets, build_train_mixture, dataset_configs
from chatbridge.models.chatbridge import ChatBridgeModel
from chatbridge.models.freezing import count_parameters
from chatbridge.models.layers import TORCH_DTYPES
from chatbridge.models.llm import load_llm_tokenizer
from chatbridge.models.setup import build_model_for_training, compile_blocks, enable_activation_checkpointing
from chatbridge.training import checkpoint as ckpt
from chatbridge.training.distributed import (
    DistributedContext,
    all_reduce_sum,
    average_gradients,
    barrier,
    cleanup_distributed,
    setup_distributed,
    shard_model,
)
from chatbridge.training.feature_cache import attach_feature_caches
from chatbridge.training.metrics_log import MetricsLog, WindowMeans
from chatbridge.training.optim import build_optimizer
from chatbridge.training.schedule import learning_rate

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a finished run put its outputs."""

    output_dir: Path
    final_checkpoint: Path
    metrics_file: Path
    losses: list[float]
    model: ChatBridgeModel


def train(config: TrainConfig) -> TrainResult:
    """Run one stage as `config` describes it; returns where the outputs are."""
    # 1. Setup: process group, seeds, output folder with the resolved config.
    caller_group = torch.distributed.is_initialized()  # a process group the caller made is the caller's to end
    context = setup_distributed(config.run.device)
    torch.manual_seed(config.run.seed + context.rank)
    output_dir = Path(config.run.output_dir)
    if context.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, output_dir / "config.yaml")

    # 2. Build: model (frozen towers, trainable set), data mixture, optimizer; resume if asked.
    model = _prepare_model(config, context)
    mixture = _prepare_data(config, model, context)
    optimizer = build_optimizer(
        model, config.run.init_lr, config.run.weight_decay, config.model.faithful.weight_decay_everything
    )
    scaler = torch.amp.GradScaler(enabled=config.run.precision == "fp16" and context.device.type == "cuda")
    start_step = _resume(config, output_dir, model, optimizer, scaler, mixture)

    # 3. Steps.
    log = None
    if context.is_main:
        log = MetricsLog(output_dir, config.run.tensorboard, config.run.wandb_project, start_step)
    losses, window = [], WindowMeans()
    progress = tqdm(
        range(start_step, config.run.max_steps),
        initial=start_step,
        total=config.run.max_steps,
        desc="train",
        disable=not context.is_main,
        dynamic_ncols=True,
    )
    for step in progress:
        started = time.perf_counter()
        lr = _set_learning_rate(optimizer, config, step)
        loss, samples, per_dataset = _optimizer_step(model, optimizer, scaler, mixture, config, context)
        losses.append(loss)
        samples_per_second = samples * context.world_size / (time.perf_counter() - started)
        progress.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{samples_per_second:.1f}")
        window.add({"loss": loss, "samples_per_second": samples_per_second, **per_dataset})
        if log is not None and (step + 1) % config.run.log_every == 0:
            log.log(step + 1, {"lr": lr, **window.pop()})
        if (
            config.run.checkpoint_every
            and (step + 1) % config.run.checkpoint_every == 0
            and step + 1 < config.run.max_steps
        ):
            _save(config, output_dir, model, optimizer, scaler, mixture, step + 1, context)

    # 4. Cleanup: the final checkpoint (our format, plus training state for resuming), logs closed.
    final = _save(config, output_dir, model, optimizer, scaler, mixture, config.run.max_steps, context)
    final_alias = output_dir / ckpt.FINAL_NAME
    mixture.close()
    if context.is_main:
        ckpt.publish_final(final, final_alias)
        log.close()
        mixture.log_skipped()
    if not caller_group:
        cleanup_distributed()
    return TrainResult(output_dir, final_alias, output_dir / "metrics.jsonl", losses, model)


def _prepare_model(config: TrainConfig, context: DistributedContext) -> ChatBridgeModel:
    """The model on this rank's device, with activation checkpointing and FSDP as configured."""
    model = build_model_for_training(config.model, context.device)
    if config.run.activation_checkpointing:
        logger.info("activation checkpointing: %s", ", ".join(enable_activation_checkpointing(model)))
    if config.run.compile:
        logger.info("torch.compile: %s", compile_blocks(model))
    trainable, frozen = count_parameters(model)
    logger.info("parameters: %s trainable, %s frozen", f"{trainable:,}", f"{frozen:,}")
    if config.run.fsdp and context.world_size > 1:
        units = shard_model(model)
        logger.info("FSDP: model sharded in %d units over %d ranks", units, context.world_size)
    elif config.run.fsdp:
        logger.info("FSDP: one process, nothing to shard")
    return model


def _prepare_data(config: TrainConfig, model: ChatBridgeModel, context: DistributedContext) -> MixtureLoader:
    """The datasets (built from the config alone), reading the feature cache if asked, mixed for this rank."""
    tokenizer = load_llm_tokenizer(config.model.llm)
    sources = build_datasets(config, tokenizer)
    if config.run.feature_cache:
        if not context.is_main:
            barrier()  # rank 0 fills the feature cache first; the others then only read it
        cache = Path(config.run.feature_cache)
        attach_feature_caches(sources, dataset_configs(config), model, cache, fill_missing=context.is_main)
        if context.is_main:
            barrier()
    return build_train_mixture(config, sources, tokenizer, context.rank, context.world_size)


def _optimizer_step(model, optimizer, scaler, mixture, config: TrainConfig, context: DistributedContext):
    """One optimizer step over the step's micro-batches (`grad_accum_steps` of them) on every rank.

    The loss is normalised by the number of supervised tokens in the whole step (all micro-batches, all ranks),
    so accumulation and data parallelism compute exactly the token-mean loss of the combined batch (the reference
    neither divided by the accumulation count nor matched the combined batch).

    Returns (loss of the step, samples on this rank, loss per dataset name).
    """
    optimizer.zero_grad(set_to_none=not config.model.faithful.zero_grad_keep_zeros)
    name, batches = next(mixture)  # one draw of batch_size x grad_accum_steps samples, already split
    tokens_here = sum(batch.num_supervised_tokens for batch in batches)
    tokens_everywhere = max(all_reduce_sum(float(tokens_here), context.device), 1.0)
    step_loss, samples = 0.0, 0
    for batch in batches:
        batch = batch.to(context.device)
        with _autocast(config, context):
            output = model(batch)
        scaler.scale(output.loss * output.num_supervised_tokens * context.world_size / tokens_everywhere).backward()
        step_loss += output.loss.item() * output.num_supervised_tokens / tokens_everywhere  # one host sync
        samples += batch.input_ids.shape[0]
    trainable = [p for group in optimizer.param_groups for p in group["params"]]  # no walk over frozen weights
    average_gradients(trainable, context)
    if config.run.grad_clip is not None:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(trainable, config.run.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    step_loss = all_reduce_sum(step_loss, context.device)
    if not math.isfinite(step_loss):
        raise FloatingPointError(f"loss became {step_loss}; lower run.init_lr or use run.precision=fp32")
    return step_loss, samples, {f"loss/{name}": step_loss}


def _autocast(config: TrainConfig, context: DistributedContext):
    if config.run.precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=context.device.type, dtype=TORCH_DTYPES[config.run.precision])


def _set_learning_rate(optimizer: torch.optim.Optimizer, config: TrainConfig, step: int) -> float:
    run = config.run
    lr = learning_rate(step, run.init_lr, run.min_lr, run.warmup_lr, run.warmup_steps, run.max_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _resume(config, output_dir, model, optimizer, scaler, mixture) -> int:
    ckpt.clean_stale_temporaries(output_dir)
    folder = ckpt.find_resume_checkpoint(config.run.resume, output_dir)
    if folder is None:
        return 0
    state = ckpt.load_training_checkpoint(folder, model)
    ckpt.restore_optimizer(model, optimizer, state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    mixture.load_state_dict(state["mixture"])
    logger.info("resumed from %s at step %d", folder, state["step"])
    return state["step"]


def _save(config, output_dir, model, optimizer, scaler, mixture, step: int, context: DistributedContext) -> Path:
    folder = ckpt.checkpoint_dir(output_dir, step)
    tensors, optimizer_state = ckpt.gather_trainable(model, optimizer)  # on every rank: a gather when sharded
    if context.is_main:
        state = {
            "step": step,
            "optimizer": optimizer_state,
            "scaler": scaler.state_dict(),
            "mixture": mixture.state_dict(),
        }
        ckpt.save_training_checkpoint(folder, tensors, config, state)
        ckpt.prune_checkpoints(output_dir, config.run.keep_last)
        logger.info("checkpoint: %s", folder)
    barrier()
    return folder
