"""Training steps with more media than one image: stage-1 video (4 frames) and stage-2 video + audio, against our
stage-1 image step (no peer: transformers' BLIP-2 has neither video nor audio).

    python benchmarks/media_step.py [--preset bench-medium] [--precision bf16] [--rounds 3] [--steps 1]

The variants live in this process and take turns (`bench_common.alternate`); medians. The stage-2 batch holds a
48-token instruction, then 32 soft tokens for the video and 32 for the audio (one BEATs segment of 1024 fbank
frames), then the 32-token answer; the video batch holds 32 soft tokens from 4 frames encoded in one tower call.
"""

from __future__ import annotations

import argparse
import sys

from bench_common import PRESETS, add_machine_arguments, alternate, footer, make_step, table, use_threads

VARIANTS = {  # variant -> what one sample holds
    "ours": "image + caption",
    "ours-video": "video (4 frames) + caption",
    "ours-stage2": "instruction + video (4 frames) + audio + answer",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="bench-medium")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=["bf16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1)
    add_machine_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    preset = PRESETS[args.preset]
    rows = []
    for precision in args.precision:
        calls = {variant: make_step(variant, preset, precision) for variant in VARIANTS}
        seconds = alternate(calls, args.rounds, args.steps)
        del calls
        for variant, sample in VARIANTS.items():
            samples_per_second = preset.batch / seconds[variant]
            ratio = seconds[variant] / seconds["ours"]
            rows.append([precision, sample, f"{seconds[variant]:.2f}", f"{samples_per_second:.2f}", f"{ratio:.2f}"])
    print(table(["precision", "sample", "s/step", "samples/s", "step time / image step"], rows))
    print(f"\n{footer(args.preset)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
