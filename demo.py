"""Chat with ChatBridge in the browser (Gradio), on 127.0.0.1 unless told otherwise.

python demo.py --cfg-path eval_configs/chatbridge_tiny_eval.yaml [--host 127.0.0.1] [--port 7860] [--share]

Images, videos and audio files (several per message), the video's own sound track on request, streamed answers,
multi-turn history per browser session, Restart, and generation settings; the page and its handlers are in
`chatbridge/ui/`.
"""

from __future__ import annotations

import sys

from chatbridge.cli import config_argument_parser, fail, load_config_or_exit, setup_logging, user_errors_exit


@user_errors_exit
def main() -> int:
    parser = config_argument_parser("Chat with ChatBridge about images, videos and audio in the browser.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also ask Gradio for a public link (anyone can use it)")
    args = parser.parse_args()
    setup_logging()
    config = load_config_or_exit(args)

    try:
        from chatbridge.ui.app import build_app, serve
        from chatbridge.ui.examples import world_examples
        from chatbridge.ui.handlers import ChatHandlers
    except ModuleNotFoundError as error:
        return fail(ModuleNotFoundError(f"{error.name} is not installed: pip install -e '.[demo]'"))
    from chatbridge.config_loading import check_inputs_exist
    from chatbridge.inference.engine import load_engine

    check_inputs_exist(config, ("model",))
    engine = load_engine(config, max_megabytes=config.demo.max_upload_megabytes)
    examples = world_examples(config.synthetic.world) if config.demo.examples else []
    app = build_app(ChatHandlers(engine, config.demo), examples, config.demo.concurrency)
    serve(app, args.host, args.port, args.share, config.demo, [config.synthetic.world] if examples else [])
    return 0


if __name__ == "__main__":
    sys.exit(main())
