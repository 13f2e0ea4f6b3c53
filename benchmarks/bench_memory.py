"""Peak resident memory of one training-step variant, measured in a fresh process.

A script calls `measure_memory_in_child(script, variant, ...)`; the child (`script --memory-child VARIANT ...`) runs
`memory_child` and prints one JSON line. The peak is the kernel's high-water mark (VmHWM) reset after building, so
that what building costs (a random LLM made in fp32 and then cast) is not counted as training memory.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

from bench_common import Preset, make_step


def rss_mib() -> float:
    """Current resident memory of this process."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak_rss() -> None:
    """Restart the kernel's high-water mark of resident memory (VmHWM) from the current resident memory."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_rss_mib() -> float:
    """VmHWM: the most resident memory since the start or the last `reset_peak_rss`."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


IMPORTED_BY_BOTH = (
    "transformers.models.llama.modeling_llama",
    "transformers.models.blip_2.modeling_blip_2",
    "chatbridge.models.setup",
    "chatbridge.training.optim",
)


def measure_memory_in_child(script: Path, variant: str, preset: str, precision: str, steps: int = 3) -> dict:
    """Peak RSS of one model's steps in a fresh process (`script --memory-child ...` prints one JSON line)."""
    command = [sys.executable, str(script), "--memory-child", variant, "--preset", preset, "--precision", precision]
    command += ["--steps", str(steps)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def memory_child(variant: str, preset: Preset, precision: str, steps: int) -> dict:
    """Run in the child: build, run `steps` steps, report the peak and the resident memory after imports."""
    import importlib

    for module in IMPORTED_BY_BOTH:  # so that the baseline holds every import, whichever side runs
        importlib.import_module(module)
    gc.collect()
    baseline = rss_mib()
    step = make_step(variant, preset, precision)
    gc.collect()
    built = rss_mib()
    reset_peak_rss()  # what building costs (e.g. a random LLM made in fp32, then cast) is not training memory
    for _ in range(steps):
        step()
    peak = peak_rss_mib()
    return {"baseline_mib": baseline, "built_mib": built, "peak_mib": peak, "model_and_step_mib": peak - baseline}
