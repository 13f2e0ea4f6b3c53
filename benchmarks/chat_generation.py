"""Generation speed of `ChatSession` against raw `LlamaForCausalLM.generate` on the same input embeddings.

    python benchmarks/chat_generation.py [--tokens 64] [--repeats 5] [--width 1024] [--layers 8]

One process, one machine, alternating the two over several repetitions (medians). Both generate exactly `--tokens`
greedy tokens after the same prompt (an image and a question); the session's figures include everything it does
around `generate` (reading and encoding the image, tokenising the turn, embedding, the per-sequence stop check,
decoding the answer). Time to first token is measured with a streamer on both. The LLM is a random LLaMA of the
given width with the tiny tokenizer's vocabulary (every generated id must decode), the encoders are the tiny
preset's; a small vocabulary makes the session's own work a larger share, so the ratio is a conservative one. Not
a test: it prints one table.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.generation.streamers import BaseStreamer

REPO = Path(__file__).resolve().parents[1]


class FirstTokenClock(BaseStreamer):
    """Records when the first generated token arrives (the first `put` holds the prompt, the second the token)."""

    def __init__(self, start: float) -> None:
        self.start, self.puts, self.first = start, 0, None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2 and self.first is None:
            self.first = time.perf_counter() - self.start

    def end(self) -> None:
        pass


def write_llm(folder: Path, width: int, layers: int, tokenizer_folder: Path, vocab_size: int) -> None:
    """A random LLaMA of the given size with the tiny tokenizer's files (so every generated id decodes)."""
    import shutil

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=int(width * 2.6875),
        num_hidden_layers=layers,
        num_attention_heads=width // 64,
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_folder / name).exists():
            shutil.copy(tokenizer_folder / name, folder / name)


def build_engine(work: Path, width: int, layers: int, tokens: int):
    from chatbridge.config_apps import GenerationSettings
    from chatbridge.config_loading import load_config
    from chatbridge.inference.engine import InferenceEngine
    from chatbridge.inference.media import MediaReader
    from chatbridge.models.llm import load_tokenizer
    from chatbridge.models.setup import build_model_for_training
    from chatbridge.synthetic.tiny_llm import write_tiny_llama_folder
    from chatbridge.synthetic.world import SCALES, ensure_world

    world = ensure_world(work / "world", sizes=SCALES["tiny"]).root
    write_tiny_llama_folder(work / "tokenizer")
    write_llm(work / "llm", width, layers, work / "tokenizer", len(load_tokenizer(work / "tokenizer")))
    config = load_config(REPO / "eval_configs" / "chatbridge_tiny_eval.yaml", [f"model.llm.path={work / 'llm'}"])
    model = build_model_for_training(dataclasses.replace(config.model, checkpoint=None, trainable=[]))
    # A stop text the random LLM never writes, and no end of sequence: both sides generate exactly `tokens`.
    settings = GenerationSettings(max_new_tokens=tokens, stop="\x00never\x00")
    model.llm.generation_config.eos_token_id = None
    reader = MediaReader(config.processor, config.model)
    return InferenceEngine(model, load_tokenizer(work / "llm"), reader, settings), world


def time_session(engine, media, question: str, iterator: bool = False) -> tuple[float, float, int]:
    """(seconds, time to first token, tokens) of one whole chat turn, streamed by callback (the terminal chat's
    way) or through the iterator (`ask_stream`, the demo's)."""
    from chatbridge.inference.session import ChatSession

    session = ChatSession(engine)
    start = time.perf_counter()
    first: list[float] = []

    def seen(_: str) -> None:
        first.append(first[0] if first else time.perf_counter() - start)

    if iterator:
        for piece in session.ask_stream(question, media):
            seen(piece)
    else:
        session.ask(question, media, on_text=seen)
    return time.perf_counter() - start, first[0], session.last.new_tokens


def time_raw(engine, media, question: str, tokens: int) -> tuple[float, float, int]:
    """The same turn's embeddings (made beforehand, untimed) through `LlamaForCausalLM.generate` alone."""
    prompt = engine.turn_prompt(question, engine.encode_media(media), first=True)
    embeds, mask, _ = engine.embed_prompts([prompt])
    start = time.perf_counter()
    clock = FirstTokenClock(start)
    with torch.no_grad():
        out = engine.model.llm.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=engine.tokenizer.pad_token_id,
            streamer=clock,
        )
    return time.perf_counter() - start, clock.first, out.shape[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    args = parser.parse_args()
    from chatbridge.inference.media import MediaFile

    with tempfile.TemporaryDirectory() as folder:
        engine, world = build_engine(Path(folder), args.width, args.layers, args.tokens)
        media = [MediaFile(world / "images" / "img_00000.png", "image")]
        question = "what colour is the shape, and where is it?"
        time_session(engine, media, question), time_raw(engine, media, question, args.tokens)  # warm-up
        runs = {"ChatSession": [], "raw generate": [], "ask_stream": []}
        for _ in range(args.repeats):
            runs["ChatSession"].append(time_session(engine, media, question))
            runs["raw generate"].append(time_raw(engine, media, question, args.tokens))
            runs["ask_stream"].append(time_session(engine, media, question, iterator=True))
    print(
        f"LLaMA width {args.width}, {args.layers} layers; {args.tokens} greedy tokens; "
        f"median of {args.repeats}; {torch.get_num_threads()} threads"
    )
    print(f"{'':<14}{'tokens/s':>10}{'first token ms':>16}")
    medians = {}
    for name, results in runs.items():
        rate = statistics.median(tokens / seconds for seconds, _, tokens in results)
        first = statistics.median(first for _, first, _ in results) * 1000
        medians[name] = (rate, first)
        print(f"{name:<14}{rate:>10.1f}{first:>16.1f}")
    ratio = medians["ChatSession"][0] / medians["raw generate"][0]
    print(f"ChatSession / raw tokens/s: {ratio:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
