"""Loss curves from training runs' `metrics.jsonl`, as one PNG a researcher can look at instead of reading numbers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first


def read_losses(metrics_file: Path) -> tuple[list[int], list[float]]:
    """(steps, losses) of a `metrics.jsonl` (each line one logged window: its last step and mean loss)."""
    steps, losses = [], []
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "loss" in record:
            steps.append(int(record["step"]))
            losses.append(float(record["loss"]))
    return steps, losses


def plot_losses(runs: Mapping[str, Path], output: Path, title: str = "training loss") -> Path:
    """One panel per run (label -> its `metrics.jsonl`), loss against step, written to `output` (PNG)."""
    figure, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.6), squeeze=False)
    for axis, (label, metrics_file) in zip(axes[0], runs.items(), strict=True):
        steps, losses = read_losses(metrics_file)
        axis.plot(steps, losses, color="tab:blue", linewidth=1.5, marker="." if len(steps) < 40 else None)
        axis.set_title(label)
        axis.set_xlabel("step")
        axis.set_ylabel("loss (nats per supervised token)")
        axis.grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    plt.close(figure)
    return output
