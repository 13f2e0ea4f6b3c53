"""Achieved FLOP/s of our stage-1 image training step over this machine's matmul peak, measured in the same run.

    python benchmarks/flops.py [--preset bench-medium] [--precision fp32 bf16] [--rounds 3] [--steps 1]

The peak is a square 2048 x 2048 matmul in the step's dtype; it takes turns with the training step (so both see the
same load), medians of `--rounds`. The FLOP model below counts matrix products only (2 m n k each; norms, softmax,
activations and the optimizer are free), which is what a matmul peak can be compared with:

- vision tower (frozen, forward only): patch embedding, per block qkv + output projection + MLP + the two attention
  products, over B x (1 + patches) tokens;
- Q-Former (trained): forward, then twice that in backward (input and weight gradients), except the cross-attention
  key/value projections of the frozen features, whose backward has weight gradients only;
- `llm_proj` (trained): forward + 2 x backward;
- LLM (frozen, on the L-1 columns the loss needs): forward, and backward for input gradients only (the soft tokens
  need them): 1x forward for the projections, 2x for the attention products;
- LM head at the K = B x caption supervised positions: forward and the input gradient.
"""

from __future__ import annotations

import argparse
import sys

import torch
from bench_common import (
    DTYPES,
    PRESETS,
    Preset,
    add_machine_arguments,
    alternate,
    footer,
    make_step,
    matmul_peak_call,
    table,
    use_threads,
)


def vision_flops(p: Preset, items: int) -> float:
    tokens = 1 + (p.image_size // p.patch_size) ** 2
    n, d = items * tokens, p.vit_width
    patch_embed = 2 * items * (tokens - 1) * 3 * p.patch_size**2 * d
    block = 2 * n * d * (3 * d + d + 2 * p.vit_mlp) + 2 * 2 * items * tokens**2 * d
    return patch_embed + p.vit_depth * block


def qformer_flops(p: Preset, items: int) -> float:
    """Forward and backward of the trained Q-Former and `llm_proj` over `items` frozen-feature memories."""
    n, d, memory = p.batch * p.queries, p.qformer_width, items * (1 + (p.image_size // p.patch_size) ** 2)
    self_part = 2 * n * d * (4 * d + 2 * p.qformer_mlp) + 2 * 2 * p.batch * p.queries**2 * d
    cross_queries = 2 * n * d * 2 * d + 2 * 2 * n * (memory // p.batch) * d  # q, o projections and attention
    cross_kv = 2 * memory * p.vit_width * 2 * d
    cross_layers = (p.qformer_layers + 1) // 2  # cross-attention in layers 0, 2, ...
    projection = 2 * n * d * p.llm_width
    trained_both_ways = p.qformer_layers * self_part + cross_layers * cross_queries + projection
    return 3 * trained_both_ways + 2 * cross_layers * cross_kv


def llm_flops(p: Preset, text_before: int = 0, media: int = 1) -> float:
    length = 1 + text_before + media * p.queries + p.caption - 1  # the LLM runs on L-1 columns
    n, d = p.batch * length, p.llm_width
    projections = 2 * n * d * (4 * d + 3 * p.llm_mlp)
    attention = 2 * 2 * p.batch * length**2 * d
    head = 2 * p.batch * p.caption * d * p.vocab
    return p.llm_layers * (2 * projections + 3 * attention) + 2 * head


def step_flops(p: Preset) -> dict[str, float]:
    """FLOPs of one stage-1 image step, by part."""
    return {"vision": vision_flops(p, p.batch), "qformer": qformer_flops(p, p.batch), "llm": llm_flops(p)}


def measure(preset: Preset, precision: str, rounds: int, steps: int) -> list[str]:
    peak_call, peak_flops = matmul_peak_call(DTYPES[precision])
    repeats = 4  # a few matmuls per turn, so that a turn of the peak lasts about as long as a training step

    def peak() -> None:
        for _ in range(repeats):
            peak_call()

    seconds = alternate({"step": make_step("ours", preset, precision), "peak": peak}, rounds, steps)
    flops = step_flops(preset)
    achieved = sum(flops.values()) / seconds["step"]
    peak_rate = repeats * peak_flops / seconds["peak"]
    parts = " + ".join(f"{name} {value / 1e9:.0f}" for name, value in flops.items())
    return [
        precision,
        f"{sum(flops.values()) / 1e9:.0f} ({parts})",
        f"{seconds['step']:.2f}",
        f"{achieved / 1e9:.0f}",
        f"{peak_rate / 1e9:.0f}",
        f"{100 * achieved / peak_rate:.0f} %",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench-medium")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1)
    add_machine_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    rows = [measure(PRESETS[args.preset], precision, args.rounds, args.steps) for precision in args.precision]
    header = ["precision", "GFLOP per step (parts)", "s/step", "achieved GFLOP/s", "matmul peak GFLOP/s", "of peak"]
    print(table(header, rows))
    print(f"\n{footer(args.preset)}")
    return 0


if __name__ == "__main__":
    torch.manual_seed(0)
    sys.exit(main())
