"""Stage-1 image training step: ChatBridge against transformers' BLIP-2 at the same dimensions.

    python benchmarks/train_step.py [--preset bench-medium] [--precision fp32 bf16] [--rounds 5] [--threads N]

Both models have the preset's vision tower, Q-Former and LLaMA, the same frozen/trainable split (vision and LLM
frozen; Q-Former, queries and projection trained with fused AdamW and gradient clipping), the same batch and
precision. Speed: all variants live in this process and take turns, `--rounds` rounds of `--steps` steps each
after warm-up; the table gives medians. Memory: each variant runs a few steps in its own fresh process (peak
resident memory, and the part of it above what the imports alone take). The peer runs at its default settings
(fp32 weights under autocast, SDPA attention, logits at every position) and at its best ones (frozen towers stored
in the step's precision, eager attention, logits at BOS and the caption only, selected by an index tensor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench_common import PRESETS, add_machine_arguments, alternate, footer, make_step, table, use_threads
from bench_memory import measure_memory_in_child, memory_child

VARIANTS = ("ours", "peer-default", "peer-best")
EXTRA = ("ours-compiled", "ours-sdpa", "ours-checkpointed")
"""Also selectable with `--variants`: ours with `run.compile` (each transformer block compiled; the first steps
compile), ours with SDPA attention instead of `model.attention=auto` (eager on CPU), and ours with
`run.activation_checkpointing` (the LLM's and Q-Former's layers recomputed in the backward pass)."""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench-medium")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--variants", nargs="+", choices=VARIANTS + EXTRA, default=list(VARIANTS))
    parser.add_argument("--no-memory", action="store_true", help="skip the per-process memory runs")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    add_machine_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    preset = PRESETS[args.preset]
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child, preset, args.precision[0], args.steps)))
        return 0
    rows = []
    for precision in args.precision:
        variants = ["ours", *(v for v in args.variants if v != "ours")]
        calls = {variant: make_step(variant, preset, precision) for variant in variants}
        seconds = alternate(calls, args.rounds, args.steps)
        del calls
        memory = {} if args.no_memory else {v: measure(v, args.preset, precision) for v in variants}
        rows += rows_for(precision, seconds, memory, preset.batch)
    header = ["precision", "model", "samples/s", "ours' speed / this", "peak RSS MiB", "above imports MiB"]
    header.append("ours' memory / this")
    print(table(header, rows))
    print(f"\n{footer(args.preset)}")
    return 0


def measure(variant: str, preset: str, precision: str) -> dict:
    return measure_memory_in_child(Path(__file__), variant, preset, precision)


def rows_for(precision: str, seconds: dict[str, float], memory: dict[str, dict], batch: int) -> list[list[str]]:
    rows = []
    for variant in seconds:
        speed = f"{seconds[variant] / seconds['ours']:.2f}"
        cells = [precision, variant, f"{batch / seconds[variant]:.2f}", speed]
        if memory:
            peak, above = memory[variant]["peak_mib"], memory[variant]["model_and_step_mib"]
            ours_above = memory["ours"]["model_and_step_mib"]
            cells += [f"{peak:.0f}", f"{above:.0f}", f"{ours_above / above:.2f}"]
        else:
            cells += ["-", "-", "-"]
        rows.append(cells)
    return rows


if __name__ == "__main__":
    sys.exit(main())
