"""Training throughput and peak memory of a fixed small ChatBridge config: fp32 vs bf16, with and without the
frozen-feature cache.

    python benchmarks/train_throughput.py [--steps 20] [--warmup 5]

Each variant trains in its own subprocess (so that peak memory is that variant's own) on the synthetic world,
and the script prints samples/s over the timed steps and the peak resident memory. Not a test: numbers, not
assertions. The config is the tiny stage-1 preset widened so that matrix products, not Python overhead, dominate.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = [  # the "fixed small config": every part of ChatBridge at width 256 (audio 192: it keeps its adapter)
    "model.encoders.vision.image_size=64",
    "model.encoders.vision.patch_size=8",
    "model.encoders.vision.width=256",
    "model.encoders.vision.depth=4",
    "model.encoders.vision.num_heads=4",
    "model.encoders.audio.width=192",
    "model.encoders.audio.embed_dim=128",
    "model.encoders.audio.ffn_dim=768",
    "model.encoders.audio.num_heads=4",
    "model.connector.hidden_size=256",
    "model.connector.intermediate_size=1024",
    "model.connector.num_query_tokens=16",
    "synthetic.tiny_llm.hidden_size=256",
    "synthetic.tiny_llm.num_layers=4",
    "synthetic.tiny_llm.pretrain_steps=0",
    "run.checkpoint_every=0",
    "run.log_every=1",
]
PRECISION_KEYS = ("run", "model.encoders.vision", "model.encoders.audio", "model.llm")
# Video frames are fixed (middle of each segment) in every variant, so that the cache can hold them.
DETERMINISTIC_FRAMES = ["datasets.video_captions.processor.frame_sampling=segment_middle"]
VARIANTS = {
    f"{precision}{'+cache' if cache else ''}": [
        *(f"{key}.precision={precision}" for key in PRECISION_KEYS),
        *DETERMINISTIC_FRAMES,
        *(["run.feature_cache=.cache/bench_features"] if cache else []),
    ]
    for precision in ("fp32", "bf16")
    for cache in (False, True)
}


def run_variant(name: str, steps: int, warmup: int, workdir: Path) -> dict[str, float]:
    """Train `warmup + steps` steps in this process and measure the last `steps`."""
    from chatbridge.config_loading import load_config
    from chatbridge.synthetic import prepare
    from chatbridge.training.loop import train

    options = [
        *SMALL,
        *VARIANTS[name],
        f"run.max_steps={warmup + steps}",
        f"run.root={workdir}",
        f"run.output_dir=outputs/bench_{name}",
    ]
    config = load_config(REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml", options)
    prepare(config)
    result = train(config)
    rows = [json.loads(line) for line in result.metrics_file.read_text().splitlines()][warmup:]
    samples_per_second = sum(row["samples_per_second"] for row in rows) / len(rows)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"samples_per_second": samples_per_second, "peak_rss_mib": peak_mib}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)  # child process mode
    parser.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.steps, args.warmup, args.workdir)))
        return 0
    with tempfile.TemporaryDirectory() as workdir:
        print(f"{'variant':<12}{'samples/s':>12}{'peak RSS MiB':>14}")
        for name in VARIANTS:
            command = [
                sys.executable,
                __file__,
                "--variant",
                name,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--workdir",
                workdir,
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            numbers = json.loads(output.strip().splitlines()[-1])
            print(f"{name:<12}{numbers['samples_per_second']:>12.1f}{numbers['peak_rss_mib']:>14.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
