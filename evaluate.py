"""Evaluate ChatBridge on the benchmarks of an eval config; several ranks with torchrun.

python evaluate.py --cfg-path eval_configs/chatbridge_tiny_eval.yaml
torchrun --nproc-per-node 8 evaluate.py --cfg-path eval_configs/flickr30k.yaml

Predictions are appended to `<evaluation.output_dir>/<benchmark>/predictions.rank<r>.jsonl` as they are made (a
restarted run skips finished items); metrics go to `metrics.json` per benchmark and the table to `results.md`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbridge.cli import config_argument_parser, fail, load_config_or_exit, setup_logging, user_errors_exit


@user_errors_exit
def main() -> int:
    parser = config_argument_parser("Evaluate ChatBridge on the benchmarks of an eval config.")
    args = parser.parse_args()
    setup_logging()
    config = load_config_or_exit(args)
    if not config.evaluation.benchmarks:
        return fail(f"{args.cfg_path}: evaluation.benchmarks is empty: name at least one benchmark to run")

    from chatbridge.config_loading import check_inputs_exist, check_output_folder
    from chatbridge.evaluation.runner import RESULTS_FILE, evaluate
    from chatbridge.inference.engine import load_engine
    from chatbridge.synthetic import prepare
    from chatbridge.training.distributed import cleanup_distributed, setup_distributed

    check_output_folder(config.evaluation.output_dir, "evaluation.output_dir")
    prepare(config)
    check_inputs_exist(config, ("model", "evaluation"))
    context = setup_distributed(config.run.device)
    try:
        evaluate(config, load_engine(config, context.device), context)
    finally:
        cleanup_distributed()
    if context.is_main:
        print((Path(config.evaluation.output_dir) / RESULTS_FILE).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
