"""One stage-1 epoch with and without the frozen-feature cache (`run.feature_cache`), at bench-small dims.

    python benchmarks/feature_cache_epoch.py [--precision fp32] [--steps 75] [--workdir DIR]

`train.py`'s own loop (`chatbridge.training.loop.train`) runs the tiny stage-1 config narrowed to the synthetic
world's image captions (600 images, batch 8: 75 steps are one epoch) and widened to bench-small: EVA 384 wide,
6 blocks, 224 px, patch 14; Q-Former 384 wide, 2 layers, 32 queries; LLaMA 512 wide, 4 layers. The LLM's vocabulary
is the synthetic world's tokenizer (512 pieces), not bench-small's 32000: a sentencepiece model of 32000 pieces
cannot be trained on the world's texts, and a stage-1 run needs a real tokenizer. Towers are random (no checkpoint).

Three epochs, one after another in this process: without the cache; with an empty cache (it is filled before the
first step: the fill is timed apart, as it is paid once); with the full cache. The epoch time is the sum of the
step times the loop logs (`metrics.jsonl`), so building the model and writing checkpoints are not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_common import PRESETS, REPO, add_machine_arguments, footer, table, use_threads

BASE = REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml"


def bench_small_options(precision: str) -> list[str]:
    p = PRESETS["bench-small"]
    vision = "model.encoders.vision"
    return [
        f"{vision}.image_size={p.image_size}",
        f"{vision}.patch_size={p.patch_size}",
        f"{vision}.width={p.vit_width}",
        f"{vision}.depth={p.vit_depth}",
        f"{vision}.num_heads={p.vit_heads}",
        f"{vision}.mlp_ratio={p.vit_mlp / p.vit_width}",
        f"{vision}.checkpoint=null",
        "model.encoders.audio.checkpoint=null",
        "synthetic.tiny_encoders=null",
        f"model.connector.hidden_size={p.qformer_width}",
        f"model.connector.num_layers={p.qformer_layers}",
        f"model.connector.num_heads={p.qformer_heads}",
        f"model.connector.intermediate_size={p.qformer_mlp}",
        f"model.connector.num_query_tokens={p.queries}",
        f"model.max_txt_len={p.caption}",
        f"synthetic.tiny_llm.hidden_size={p.llm_width}",
        f"synthetic.tiny_llm.num_layers={p.llm_layers}",
        f"synthetic.tiny_llm.num_heads={p.llm_heads}",
        "synthetic.tiny_llm.pretrain_steps=0",
        "model.llm.path=.cache/bench_small_llama",
        f"datasets.image_captions.batch_size={p.batch}",
        *(f"{key}.precision={precision}" for key in ("run", "model.encoders.vision", "model.llm")),
        "run.checkpoint_every=0",
        "run.log_every=1",
        "run.warmup_steps=0",
    ]


def image_only_config(workdir: Path) -> Path:
    """The tiny stage-1 YAML with the image-caption dataset only (a merge cannot remove the other two)."""
    config = yaml.safe_load(BASE.read_text())
    config["datasets"] = {"image_captions": config["datasets"]["image_captions"]}
    path = workdir / "stage1_images.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def epoch(workdir: Path, name: str, options: list[str]) -> dict[str, float]:
    """Train one epoch; (seconds in the steps, wall seconds of the whole run)."""
    from chatbridge.config_loading import load_config
    from chatbridge.synthetic import prepare
    from chatbridge.training.loop import train

    run = [f"run.root={workdir}", f"run.output_dir=outputs/{name}", *options]
    config = load_config(image_only_config(workdir), run)
    prepare(config)
    started = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in result.metrics_file.read_text().splitlines()]
    batch = PRESETS["bench-small"].batch
    steps = sum(batch / row["samples_per_second"] for row in rows if "samples_per_second" in row)
    return {"steps_s": steps, "wall_s": wall, "count": len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--steps", type=int, default=75, help="steps of one epoch (600 images / batch 8)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "chatbridge_bench")
    add_machine_arguments(parser)
    args = parser.parse_args()
    use_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    cache = args.workdir / "features"
    shutil.rmtree(cache, ignore_errors=True)
    options = [*bench_small_options(args.precision), f"run.max_steps={args.steps}"]
    runs = {
        "no cache": epoch(args.workdir, "uncached", [*options, "run.feature_cache=null"]),
        "cache, first epoch (fills it)": epoch(args.workdir, "filling", [*options, f"run.feature_cache={cache}"]),
        "cache, later epochs": epoch(args.workdir, "cached", [*options, f"run.feature_cache={cache}"]),
    }
    base = runs["no cache"]["steps_s"]
    rows = [
        [name, f"{r['steps_s']:.1f}", f"{args.steps * PRESETS['bench-small'].batch / r['steps_s']:.1f}",
         f"{base / r['steps_s']:.2f}", f"{r['wall_s']:.1f}"]
        for name, r in runs.items()
    ]  # fmt: skip
    header = ["stage-1 epoch", "steps s", "samples/s", "speed-up", "wall s (build, fill, steps, checkpoint)"]
    print(table(header, rows))
    print(f"\n{args.precision}, {args.steps} steps; LLM vocabulary 512 (see the docstring)")
    print(footer("bench-small"))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
