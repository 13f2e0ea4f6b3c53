"""Process-group setup and rank logic: the only place that knows about ranks (torchrun sets the environment)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: rank 0 logs, saves checkpoints and shows the progress bar."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_preference: str) -> DistributedContext:
    """Join the torchrun process group if there is one (nccl on GPU, gloo on CPU); a plain run is rank 0 of 1."""
    use_cuda = device_preference == "cuda" or (device_preference == "auto" and torch.cuda.is_available())
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    context = DistributedContext(rank, world_size, local_rank, device)
    _silence_other_ranks(context)
    return context


def cleanup_distributed() -> None:
    """Leave the process group (no-op for a plain run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


class _RankZeroFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


def _silence_other_ranks(context: DistributedContext) -> None:
    """Only rank 0 logs INFO; other ranks keep warnings and errors."""
    if not context.is_main:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_RankZeroFilter())


def barrier() -> None:
    """Wait for every rank (no-op for a plain run)."""
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(value: float, device: torch.device) -> float:
    """The sum of `value` over ranks (the value itself for a plain run)."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def average_gradients(parameters: list[torch.nn.Parameter], context: DistributedContext) -> None:
    """Average gradients over ranks in one flat all-reduce, keeping `None` where no rank produced a gradient.

    This replaces DDP's wrapper: with several modalities, a step often leaves some parameters unused (the audio
    queries on an image batch), which DDP can only handle with `find_unused_parameters=True` and a graph walk per
    step; and a zero gradient instead of `None` would give those parameters AdamW "ghost" updates. Parameters
    sharded by FSDP (DTensors) are skipped: FSDP's reduce-scatter has averaged their gradients already.
    """
    if context.world_size == 1:
        return
    parameters = [p for p in parameters if not isinstance(p, DTensor)]
    if not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    has_grad = torch.tensor([float(p.grad is not None) for p in parameters], device=context.device)
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [has_grad])
    dist.all_reduce(flat)
    offset = 0
    for parameter, grad, used in zip(parameters, grads, flat[-len(parameters) :].tolist(), strict=True):
        size = grad.numel()
        if used:
            parameter.grad = (flat[offset : offset + size] / context.world_size).view_as(grad).to(grad.dtype)
        offset += size


def shard_model(model: torch.nn.Module) -> int:
    """Shard the model with FSDP2 (`fully_shard`) for `run.fsdp`; returns the number of units.

    The LLM is sharded per unit (`shard_llm_units`). If the LLM trains (ChatBind's full fine-tuning, or LoRA), every
    other part that trains (`llm_proj`, `token_rows`, the connector...) becomes one unit too: torch refuses to mix
    sharded and plain tensors in one fused AdamW step or gradient-norm computation, and FSDP's reduce-scatter then
    averages every gradient (`average_gradients` skips them). With a frozen LLM the trainable parts stay plain and
    replicated, as before.
    """
    from torch.distributed.fsdp import fully_shard

    units = shard_llm_units(model.llm)
    if any(parameter.requires_grad for parameter in model.llm.parameters()):
        for name, part in model.named_children():
            if name != "llm" and any(parameter.requires_grad for parameter in part.parameters()):
                fully_shard(part)
                units += 1
    return units


def shard_llm_units(llm: torch.nn.Module) -> int:
    """Shard the LLM's weights over the ranks with FSDP2; returns the units sharded.

    Each decoder layer, the input embeddings, the final norm and the LM head become one unit, gathered just for its
    own forward (and again for the backward, which flows through the LLM into the soft tokens). Units, not one root,
    because the model calls the embeddings, the decoder and the head separately. A frozen LLM saves weight memory; a
    trained one also has its gradients reduce-scattered and its AdamW state sharded, which is what makes full
    fine-tuning fit. The LLM is loaded whole on every rank first, so the saving is in steady-state, not peak load,
    memory.

    Raises:
        ValueError: the LLM has parameters outside the units (an unknown layout).
    """
    from torch.distributed.fsdp import fully_shard

    decoder = llm.get_decoder()
    units = [*decoder.layers, llm.get_input_embeddings(), llm.get_output_embeddings()]
    units += [decoder.norm] if hasattr(decoder, "norm") else []
    for unit in units:
        fully_shard(unit)
    left = [name for name, p in llm.named_parameters() if not isinstance(p, DTensor)]
    if left:
        raise ValueError(f"run.fsdp: parameters outside the sharded units: {left[:5]}")
    return len(units)
