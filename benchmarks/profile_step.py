"""torch.profiler table of one training-step variant: where its time goes, operator by operator.

    python benchmarks/profile_step.py [--variant ours] [--preset bench-medium] [--precision bf16] [--steps 2]

The variants are those of `bench_common.make_step` (ours, ours-video, ours-stage2, peer-default, peer-best, ...).
After two warm-up steps, `--steps` steps run under the profiler; the table is sorted by self CPU time, so the
operators at the top are the ones that limit the step.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from bench_common import PRESETS, add_machine_arguments, machine, make_step, use_threads
from torch.profiler import ProfilerActivity, profile


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="ours")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench-medium")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="bf16")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--shapes", action="store_true", help="group the table by input shapes too")
    add_machine_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    step = make_step(args.variant, PRESETS[args.preset], args.precision)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as profiler:
        for _ in range(args.steps):
            step()
    averages = profiler.key_averages(group_by_input_shape=args.shapes)
    print(averages.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))
    print(f"{args.variant} {args.preset} {args.precision}, {args.steps} steps; {machine()}")
    print(f"load average {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
