"""Learning-rate schedule: linear warmup, then cosine decay over the whole run (docs/reference/chatbridge.md §5.2)."""

from __future__ import annotations

import math


def learning_rate(
    step: int, init_lr: float, min_lr: float, warmup_lr: float, warmup_steps: int, max_steps: int
) -> float:  # noqa: PLR0913 - the schedule's own six numbers
    """The reference's `linear_warmup_cosine_lr` on iterations.

    Warmup goes linearly from `warmup_lr` to `init_lr` over `warmup_steps`; afterwards the cosine runs from
    `init_lr` to `min_lr` with its position counted from step 0 (not from the end of warmup), as in the reference.
    """
    if step < warmup_steps:
        return min(init_lr, warmup_lr + (init_lr - warmup_lr) * step / max(warmup_steps, 1))
    progress = min(step / max(max_steps, 1), 1.0)
    return min_lr + (init_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
