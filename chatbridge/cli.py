"""What the thin entry points (train.py, evaluate.py, demo.py) share: arguments and one-line config errors."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable

from chatbridge.config import TrainConfig
from chatbridge.config_loading import ConfigError, check_registry_names, load_config
from chatbridge.errors import UserError


def config_argument_parser(description: str) -> argparse.ArgumentParser:
    """`--cfg-path <yaml>` and LAVIS-style `--options key=value ...`."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--cfg-path", required=True, help="run YAML (model, datasets, run sections)")
    parser.add_argument(
        "--options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="overrides applied last, e.g. run.init_lr=1e-5 model.connector.num_query_tokens=16",
    )
    return parser


def load_config_or_exit(args: argparse.Namespace, require_paths: bool = True) -> TrainConfig:
    """The validated config with every registered name resolved; a problem ends the program with its one-line
    message and exit code 2 (no traceback: the message names the file and key to fix)."""
    try:
        config = load_config(args.cfg_path, args.options, require_paths=require_paths)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    try:
        check_registry_names(config)
    except ConfigError as error:
        print(f"error: {args.cfg_path}: {error}", file=sys.stderr)
        sys.exit(2)
    if config.run.cpu_threads is not None:
        import torch

        torch.set_num_threads(config.run.cpu_threads)
    return config


def setup_logging() -> None:
    """Plain `logging` to stderr; rank filtering is added by the distributed setup."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def fail(error: BaseException | str) -> int:
    """Report a user-facing error as one line on stderr; returns the exit code (2) for `sys.exit`."""
    print(f"error: {error}", file=sys.stderr)
    return 2


def user_errors_exit(main: Callable[[], int]) -> Callable[[], int]:
    """Run an entry point so that a user's mistake (a setting, a path, a file) ends in one line and exit code 2.

    `UserError` and FileNotFoundError (which this package raises only with the missing path in the message) are the
    user's; any other exception is a bug and keeps its traceback.
    """

    @functools.wraps(main)
    def wrapped() -> int:
        try:
            return main()
        except (UserError, FileNotFoundError) as error:
            return fail(str(error).splitlines()[0] if str(error) else type(error).__name__)

    return wrapped
