"""Chat with ChatBridge in the terminal about images, videos (with their sound) and audio.

python chat.py --cfg-path eval_configs/chatbridge_tiny_eval.yaml --image cat.png --question "What is shown?"
python chat.py --cfg-path eval_configs/chatbridge_tiny_eval.yaml --video clip.mp4 --with-audio   # interactive

Without --question it is a multi-turn chat: answers stream as they are generated; `/image F`, `/video F`,
`/video+audio F` and `/audio F` attach media to the next question, `/reset` starts over, `/quit` leaves.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chatbridge.cli import config_argument_parser, fail, load_config_or_exit, setup_logging, user_errors_exit

COMMANDS = {"/image": ("image",), "/video": ("video",), "/video+audio": ("video", "audio"), "/audio": ("audio",)}


@user_errors_exit
def main() -> int:
    parser = config_argument_parser("Chat with ChatBridge about images, videos and audio.")
    parser.add_argument("--image", action="append", default=[], metavar="FILE", help="an image (repeatable)")
    parser.add_argument("--video", action="append", default=[], metavar="FILE", help="a video file or frame folder")
    parser.add_argument("--with-audio", action="store_true", help="also hear each video's own sound track")
    parser.add_argument("--audio", action="append", default=[], metavar="FILE", help="an audio file (repeatable)")
    parser.add_argument("--question", help="answer once and exit (no interactive chat)")
    args = parser.parse_args()
    setup_logging()
    config = load_config_or_exit(args)

    from chatbridge.config_loading import check_inputs_exist
    from chatbridge.inference.engine import load_engine
    from chatbridge.inference.media import MediaFile, MediaInputError, media_files
    from chatbridge.inference.session import ChatSession, ContextOverflow

    check_inputs_exist(config, ("model",))
    session = ChatSession(load_engine(config))
    media = media_files(args.image, args.video, args.audio, args.with_audio)
    if args.question is not None:
        try:
            print(session.ask(args.question, media).answer)
        except (MediaInputError, ContextOverflow) as error:
            return fail(error)
        return 0
    return interactive(session, media, MediaFile, (MediaInputError, ContextOverflow))


def interactive(session, pending: list, media_file: type, recoverable: tuple) -> int:
    """The terminal loop: read a line, run a command or answer it (streamed)."""
    print("ChatBridge chat. /image F, /video F, /video+audio F, /audio F attach media; /reset; /quit.")
    while True:
        try:
            line = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print()
            return 0
        command, _, argument = line.partition(" ")
        if command == "/quit":
            return 0
        if command == "/reset":
            session.reset()
            pending.clear()
            print("(conversation cleared)")
        elif command in COMMANDS:
            pending += [media_file(Path(argument.strip()), modality) for modality in COMMANDS[command]]
            print(f"(attached {argument.strip()} to your next question)")
        elif line:
            answer_streamed(session, line, pending, recoverable)


def answer_streamed(session, question: str, pending: list, recoverable: tuple) -> None:
    """Print the answer as it streams; a bad medium or an overflow is reported and the chat goes on."""
    try:
        print("chatbridge> ", end="", flush=True)
        result = session.ask(question, list(pending), on_text=lambda piece: print(piece, end="", flush=True))
        print()
        if result.notice:
            print(f"({result.notice})")
    except recoverable as error:
        print(f"\nerror: {error}")
    pending.clear()


if __name__ == "__main__":
    sys.exit(main())
