"""Which parameters train: declared once, as glob patterns over parameter names (a stage is config data)."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn


def set_trainable(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Let exactly the parameters matching one of `patterns` train; freeze all others.

    Returns the trainable parameter names. A pattern that matches nothing is an error: it is almost always a typo
    or a stale name, and silently training less than intended is the worst way to find out.
    """
    names = [name for name, _ in model.named_parameters()]
    unmatched = [pattern for pattern in patterns if not fnmatch.filter(names, pattern)]
    if unmatched:
        prefixes = sorted({name.split(".")[0] + ".*" for name in names})
        raise ValueError(f"model.trainable: patterns {unmatched} match no parameter; top-level names: {prefixes}")
    trainable = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns))
        if parameter.requires_grad:
            trainable.append(name)
    return trainable


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, frozen) parameter counts; works on the meta device."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return trainable, frozen
