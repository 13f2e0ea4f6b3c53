"""The chunked cross-entropy of a frozen output layer gives the plain loss and gradients and keeps no logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from chatbridge.models import vocab_loss
from chatbridge.models.vocab_loss import token_cross_entropy

ROWS, WIDTH, VOCAB = 10, 16, 40


def frozen_head(dtype: torch.dtype = torch.float32) -> nn.Linear:
    head = nn.Linear(WIDTH, VOCAB, bias=False).to(dtype)
    head.weight.requires_grad_(False)
    return head


def inputs(dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(ROWS, WIDTH, generator=generator).to(dtype).requires_grad_()
    return hidden, torch.randint(VOCAB, (ROWS,), generator=generator)


def plain(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def test_two_token_example_by_hand():
    """Identity head over a 2-word vocabulary: loss = log(1 + e^(other - target)), gradient = softmax - onehot."""
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    head.weight.requires_grad_(False)
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    losses = token_cross_entropy(hidden, head, torch.tensor([0, 0]))
    torch.testing.assert_close(losses, torch.tensor([math.log(1 + math.e**-1), math.log(1 + math.e**2)]))
    losses.sum().backward()
    p0, p1 = 1 / (1 + math.e**-1), 1 / (1 + math.e**2)  # probability of word 0 in each row
    torch.testing.assert_close(hidden.grad, torch.tensor([[p0 - 1, 1 - p0], [p1 - 1, 1 - p1]]))


@pytest.mark.parametrize("logits_per_chunk", [VOCAB * 3, VOCAB * ROWS * 2], ids=["4-chunks", "1-chunk"])
def test_losses_and_gradients_equal_the_plain_path_in_fp32(monkeypatch, logits_per_chunk):
    monkeypatch.setattr(vocab_loss, "LOGITS_PER_CHUNK", logits_per_chunk)
    head, (hidden, targets) = frozen_head(), inputs()
    weights = torch.linspace(0.1, 1.0, ROWS)  # a per-token upstream gradient, as a mean per sample gives
    chunked = token_cross_entropy(hidden, head, targets)
    (grad_chunked,) = torch.autograd.grad((chunked * weights).sum(), hidden)
    expected = plain(hidden, head, targets)
    (grad_expected,) = torch.autograd.grad((expected * weights).sum(), hidden)
    torch.testing.assert_close(chunked, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad_chunked, grad_expected, rtol=1e-6, atol=1e-7)


def test_bf16_head_under_autocast_matches_the_plain_path_to_bf16_precision(monkeypatch):
    monkeypatch.setattr(vocab_loss, "LOGITS_PER_CHUNK", VOCAB * 4)
    head, (hidden, targets) = frozen_head(torch.bfloat16), inputs(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = token_cross_entropy(hidden, head, targets)
        expected = plain(hidden, head, targets)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, expected, rtol=0, atol=1e-5)  # the same bf16 logits, both reduced in fp32
    (grad_chunked,) = torch.autograd.grad(chunked.mean(), hidden)
    (grad_expected,) = torch.autograd.grad(expected.mean(), hidden)
    assert grad_chunked.dtype == torch.bfloat16
    torch.testing.assert_close(grad_chunked.float(), grad_expected.float(), rtol=2e-2, atol=1e-4)


def shapes_saved_for_backward(compute) -> list[tuple[int, ...]]:
    """Shapes of the tensors autograd keeps while `compute()` runs."""
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        compute()
    return shapes


def test_no_vocabulary_wide_tensor_is_kept_for_the_backward_pass():
    head, (hidden, targets) = frozen_head(), inputs()
    assert shapes_saved_for_backward(lambda: token_cross_entropy(hidden, head, targets)) == [(ROWS, WIDTH)]
    assert (ROWS, VOCAB) in shapes_saved_for_backward(lambda: plain(hidden, head, targets))  # what it avoids


def test_without_gradients_nothing_is_computed_for_the_backward_pass():
    head, (hidden, targets) = frozen_head(), inputs()
    with torch.no_grad():
        losses = token_cross_entropy(hidden, head, targets)
    torch.testing.assert_close(losses, plain(hidden.detach(), head, targets).detach())
    assert losses.grad_fn is None


def test_a_trainable_head_takes_the_plain_path_and_gets_its_gradient():
    head, (hidden, targets) = nn.Linear(WIDTH, VOCAB, bias=False), inputs()
    token_cross_entropy(hidden, head, targets).sum().backward()
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
