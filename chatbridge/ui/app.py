"""The Gradio page: a chat with multimodal input, a sound-track switch, Restart and generation settings.

Only layout and wiring live here; what each event does is in `handlers.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from chatbridge.config_apps import DemoSettings, GenerationSettings
from chatbridge.ui.examples import Example
from chatbridge.ui.handlers import ChatHandlers

logger = logging.getLogger(__name__)

HARD_UPLOAD_FACTOR = 4
"""Gradio itself refuses uploads over this many times `demo.max_upload_megabytes` (with its own pop-up), so a huge
upload never fills the disk; files between the limit and that reach the handlers, which answer in the chat."""
CACHE_CLEANUP = (3600, 86400)
"""(every, older than) seconds: uploads are deleted a day after they arrive (a turn reads a file once)."""
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}

INTRO = """# ChatBridge
Ask about images, videos and audio: attach one or several files with the paperclip (or drop them on the box) and
type a question. Follow-up questions remember the conversation; **Restart** starts a new one.
"""


@dataclass
class Controls:
    """The components whose values every answer needs besides the message."""

    with_audio: gr.Checkbox
    temperature: gr.Slider
    top_p: gr.Slider
    max_new_tokens: gr.Slider
    num_beams: gr.Slider

    def inputs(self) -> list[gr.components.Component]:
        """In the order of the handlers' parameters after the session."""
        return [self.with_audio, self.temperature, self.top_p, self.max_new_tokens, self.num_beams]


def build_app(handlers: ChatHandlers, examples: Sequence[Example], concurrency: int) -> gr.Blocks:
    """The page, with answers from every session queued through `concurrency` generation slots.

    Both ways of asking (typing, clicking an example) share one concurrency id, so at most `concurrency` answers
    are generated at once across all sessions; the rest wait in Gradio's queue.
    """
    with gr.Blocks(title="ChatBridge", analytics_enabled=False, delete_cache=CACHE_CLEANUP) as app:
        gr.Markdown(INTRO)
        state = gr.State(None)  # a DemoSession, created by the first message of each browser session
        chatbot = gr.Chatbot(
            label="Chat",
            height=520,
            examples=list(examples) or None,
            buttons=["copy", "copy_all"],
            feedback_options=None,
            elem_id="chat",
        )
        textbox = gr.MultimodalTextbox(
            file_count="multiple",
            sources=["upload"],
            placeholder="Ask about images, videos or audio (attach files with the paperclip)",
            show_label=False,
            elem_id="message",
        )
        with gr.Row():
            with_audio = gr.Checkbox(label="use the video's sound track", elem_id="with-audio")
            restart = gr.Button("Restart", variant="secondary", elem_id="restart")
        controls = _generation_controls(handlers.engine.settings, with_audio)
        outputs = [chatbot, textbox, state]
        answering = [
            textbox.submit(
                handlers.respond,
                [textbox, state, *controls.inputs()],
                outputs,
                concurrency_limit=concurrency,
                concurrency_id="answer",
                show_progress="minimal",
            ),
            chatbot.example_select(
                handlers.respond_example,
                [state, *controls.inputs()],
                outputs,
                concurrency_limit=concurrency,
                concurrency_id="answer",
            ),
        ]
        restart.click(handlers.restart, None, outputs, cancels=answering, queue=False)
        chatbot.clear(handlers.restart, None, outputs, cancels=answering, queue=False)  # its bin icon: the same
    return app.queue(default_concurrency_limit=concurrency)


def _generation_controls(settings: GenerationSettings, with_audio: gr.Checkbox) -> Controls:
    """Sliders starting at the config's `generation` values (temperature 0 = greedy, the engine's default)."""
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            temperature = gr.Slider(
                0.0,
                2.0,
                value=settings.temperature if settings.do_sample else 0.0,
                step=0.05,
                label="temperature",
                info="0: greedy; above 0: sample (seeded by generation.seed)",
            )
            top_p = gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="top-p", info="when sampling")
        with gr.Row():
            max_new_tokens = gr.Slider(
                1, max(1024, settings.max_new_tokens), value=settings.max_new_tokens, step=1, label="max new tokens"
            )
            num_beams = gr.Slider(
                1, 10, value=settings.num_beams, step=1, label="beams", info="above 1: the answer comes at once"
            )
    return Controls(with_audio, temperature, top_p, max_new_tokens, num_beams)


def serve(
    app: gr.Blocks, host: str, port: int, share: bool, demo: DemoSettings, example_roots: Sequence[Path] = ()
) -> None:
    """Start the server and block until it stops (Ctrl-C).

    Only this machine can connect unless `host` is another address or `share` asks Gradio for a public link; either
    is logged as a warning, since anyone who can reach the page can run the model and upload files. Server-side
    rendering (which needs Node), analytics and Gradio's run history (uploads kept in the browser) stay off; only
    the uploads folder and the examples' folders are served.
    """
    if share or host not in LOCAL_HOSTS:
        logger.warning(
            "the demo is reachable from other machines (%s): anyone who can reach it can upload files",
            "public share link" if share else f"listening on {host}",
        )
    app.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=int(demo.max_upload_megabytes * HARD_UPLOAD_FACTOR * 2**20),
        allowed_paths=[str(root) for root in example_roots],
        ssr_mode=False,
        run_history=False,
        show_error=False,
    )
