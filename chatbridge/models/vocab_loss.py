"""Per-token cross-entropy through the LLM's output layer, a chunk of positions at a time.

Written by hand because neither torch nor transformers offers a fused "linear + cross-entropy" on CPU (Liger
Kernel's is Triton-only). The plain way (`F.cross_entropy(head(hidden).float(), ...)`) keeps (K, V) fp32 logits,
their log-softmax for the backward pass and then a gradient of the same size alive together: 3 x 33 MB for
K = 256 supervised tokens of a 32000-word vocabulary.

With a frozen output layer W there is a shortcut that costs nothing: token k's loss depends on its hidden state h_k
only, and d loss_k / d h_k = (softmax(W h_k) - onehot(y_k)) W. The forward pass computes it, chunk by chunk, right
after the chunk's logits, and keeps one (K, D) tensor; the backward pass only scales its rows by the incoming
per-token gradients. The matrix products are the ones autograd would do (the second one moves from the backward pass
into the forward pass); logits exist for one chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.fsdp import FSDPModule

LOGITS_PER_CHUNK = 2**23
"""Elements of one chunk's fp32 logits (32 MiB): 262 positions of a 32000-word vocabulary. The softmax is taken in
place, so this buffer (and in a bf16 step the bf16 logits and probabilities, half its size) is all a chunk holds.
Fewer rows would cost speed: a product (C, 32000) @ (32000, D) with C <= 131 ran at 72-89 GFLOP/s in fp32 on the
benchmark machine against 124-130 with C >= 192."""


def token_cross_entropy(hidden: Tensor, head: nn.Module, targets: Tensor) -> Tensor:
    """(K,) cross-entropy of each row of `hidden` (K, D) against `targets` (K,) through the output layer `head`.

    A frozen `nn.Linear` head (ChatBridge's LLM) takes the chunked path; a trainable or other head the plain one.
    """
    if isinstance(head, nn.Linear) and head.bias is None and not head.weight.requires_grad:
        with full_weights(head):
            return FrozenHeadCrossEntropy.apply(hidden, head.weight, targets)
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


@contextmanager
def full_weights(module: nn.Module) -> Iterator[None]:
    """Gather an FSDP2 unit's weights for use outside its own forward (`run.fsdp` shards the LM head on its own).

    The backward pass needs no weight here, so the head is gathered once per step instead of twice.
    """
    if not isinstance(module, FSDPModule):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


class FrozenHeadCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `hidden @ weight.T` with the gradient with respect to `hidden` computed in the forward pass."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, hidden: Tensor, weight: Tensor, targets: Tensor) -> Tensor:
        losses = hidden.new_empty(len(hidden), dtype=torch.float32)
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        rows_per_chunk = max(1, LOGITS_PER_CHUNK // weight.shape[0])
        for start in range(0, len(hidden), rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            logits = F.linear(hidden[rows], weight)  # (C, V) in the compute dtype (bf16 under autocast)
            compute_dtype = logits.dtype
            logits = logits.float()
            target_logits = logits.gather(1, targets[rows, None]).squeeze(1)  # (C,)
            shift = logits.amax(-1)  # (C,)
            exps = logits.sub_(shift[:, None]).exp_()  # in place: no second (C, V) buffer, unlike `logsumexp`
            sums = exps.sum(-1)
            losses[rows] = sums.log() + shift - target_logits  # log-sum-exp minus the target's logit
            if grad_hidden is not None:
                probs = exps.div_(sums[:, None])  # softmax
                probs[torch.arange(len(probs)), targets[rows]] -= 1.0  # d loss / d logits
                grad_hidden[rows] = probs.to(compute_dtype) @ weight  # (C, D)
        ctx.save_for_backward(grad_hidden)
        return losses

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_losses: Tensor) -> tuple[Tensor | None, None, None]:
        (grad_hidden,) = ctx.saved_tensors
        if grad_hidden is None:
            return None, None, None
        return grad_hidden * grad_losses[:, None].to(grad_hidden.dtype), None, None
