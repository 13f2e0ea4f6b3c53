"""Chat with ChatBridge in the browser (Gradio), on 127.0.0.1 unless told otherwise.

python demo.py --cfg-path eval_configs/chatbridge_tiny_eval.yaml [--host 127.0.0.1] [--port 7860]
"""

from __future__ import annotations

import sys

from chatbridge.cli import config_argument_parser, load_config_or_exit, setup_logging


def main() -> int:
    parser = config_argument_parser("Chat with ChatBridge about images, videos and audio.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    args = parser.parse_args()
    setup_logging()
    load_config_or_exit(args)
    print("error: the config is valid, but the chat session and its UI are not built yet.", file=sys.stderr)
    return 3


if __name__ == "__main__":
    sys.exit(main())
