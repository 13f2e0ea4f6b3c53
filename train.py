"""Train ChatBridge; both stages run through the same loop (a stage is config data).

python train.py --cfg-path train_configs/chatbridge_tiny_pretrain.yaml
torchrun --nproc-per-node 8 train.py --cfg-path train_configs/chatbridge_pretrain.yaml --options run.init_lr=1e-4
"""

from __future__ import annotations

import sys

from chatbridge.cli import config_argument_parser, load_config_or_exit, setup_logging, user_errors_exit


@user_errors_exit
def main() -> int:
    parser = config_argument_parser("Train ChatBridge on a YAML-described stage.")
    parser.add_argument(
        "--dry-run", action="store_true", help="print parameter counts and a memory estimate, then stop"
    )
    parser.add_argument("--world-size", type=int, default=1, help="devices to plan for with --dry-run")
    args = parser.parse_args()
    setup_logging()
    config = load_config_or_exit(args, require_paths=not args.dry_run)
    if args.dry_run:
        from chatbridge.training.dry_run import dry_run_report

        print(dry_run_report(config, args.world_size))
        return 0

    from chatbridge.config_loading import check_inputs_exist, check_output_folder
    from chatbridge.synthetic import prepare
    from chatbridge.training.loop import train

    check_output_folder(config.run.output_dir, "run.output_dir")
    prepare(config)
    check_inputs_exist(config)
    result = train(config)
    print(f"final checkpoint: {result.final_checkpoint}")
    print(f"loss log:         {result.metrics_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
