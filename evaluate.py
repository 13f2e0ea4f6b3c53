"""Evaluate a ChatBridge checkpoint on the tasks named in an eval config.

python evaluate.py --cfg-path eval_configs/chatbridge_tiny_eval.yaml
"""

from __future__ import annotations

import sys

from chatbridge.cli import config_argument_parser, load_config_or_exit, setup_logging


def main() -> int:
    parser = config_argument_parser("Evaluate ChatBridge on the tasks of an eval config.")
    args = parser.parse_args()
    setup_logging()
    load_config_or_exit(args)
    print("error: the config is valid, but no evaluation task is built yet; nothing was evaluated.", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
