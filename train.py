"""Train ChatBridge (both stages; a stage is config data).

python train.py --cfg-path train_configs/chatbridge_tiny_pretrain.yaml
torchrun --nproc-per-node 8 train.py --cfg-path train_configs/chatbridge_pretrain.yaml --options run.init_lr=1e-4
"""

from __future__ import annotations

import sys

from chatbridge.cli import config_argument_parser, load_config_or_exit, setup_logging


def main() -> int:
    parser = config_argument_parser("Train ChatBridge on a YAML-described stage.")
    args = parser.parse_args()
    setup_logging()
    load_config_or_exit(args)
    print(
        "error: the config is valid, but the training loop is not built yet (issue: 'Training: one loop for both "
        "stages'); nothing was trained.",
        file=sys.stderr,
    )
    return 3


if __name__ == "__main__":
    sys.exit(main())
