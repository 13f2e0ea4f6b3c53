"""Where training numbers go: `metrics.jsonl` always, TensorBoard and W&B only when configured (rank 0 only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class WindowMeans:
    """Means of each metric over the steps since the last log line (a single step's loss is too noisy to read)."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1

    def pop(self) -> dict[str, float]:
        """The means so far, and a fresh window."""
        means = {key: total / self._counts[key] for key, total in self._sums.items()}
        self._sums, self._counts = {}, {}
        return means


class MetricsLog:
    """Append-only log of per-step metrics; one JSON object per line so a crash loses at most one line.

    A run that starts (or resumes) at step `start_step` first drops the lines of later steps, which the run will
    log again, so the file holds every step once.
    """

    def __init__(self, output_dir: Path, tensorboard: bool, wandb_project: str | None, start_step: int = 0) -> None:
        self.path = output_dir / "metrics.jsonl"
        _keep_steps_up_to(self.path, start_step)
        self._file = self.path.open("a", encoding="utf-8")
        self._tensorboard = _open_tensorboard(output_dir) if tensorboard else None
        self._wandb = _open_wandb(wandb_project, output_dir) if wandb_project else None

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        """Record `metrics` for `step` in every configured sink."""
        self._file.write(json.dumps({"step": step, **metrics}) + "\n")
        self._file.flush()
        numbers = {key: value for key, value in metrics.items() if isinstance(value, int | float)}
        if self._tensorboard is not None:
            for key, value in numbers.items():
                self._tensorboard.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(numbers, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


def _keep_steps_up_to(path: Path, step: int) -> None:
    """Rewrite `path` without the lines of steps after `step` (and without a torn last line)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def _open_tensorboard(output_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise RuntimeError(
            "run.tensorboard is true but tensorboard is not installed: pip install tensorboard"
        ) from error
    return SummaryWriter(log_dir=str(output_dir / "tensorboard"))


def _open_wandb(project: str, output_dir: Path) -> Any:
    if not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE"):
        raise RuntimeError("run.wandb_project is set but WANDB_API_KEY is not: export it (never put it in a YAML)")
    import wandb

    return wandb.init(project=project, dir=str(output_dir), name=output_dir.name)
