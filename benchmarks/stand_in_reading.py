"""How well the frozen stand-in LM reads media described in words: the ceiling of what a bridge can reach.

    python benchmarks/stand_in_reading.py [--world .cache/synthetic_world] [--llm .cache/tiny_llama]
                                          [--split test] [--per-type 40]

The tiny LLaMA of the main job learnt the world's language from texts in which every medium's `<query>` slot holds a
description of that medium in words (`chatbridge.synthetic.formats`). This script asks it the evaluation split's
questions (per-modality and joint) with each medium's description in its slot, rendered exactly as inference asks
(`render_chat_turn`), answered greedily, scored like `evaluate.py` (exact match; slot accuracy for joint answers).
A type the stand-in cannot answer from words, the bridge cannot answer from pixels either: low numbers here point at
the stand-in, not the bridge. Numbers, not assertions: none of this runs in the tests.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python benchmarks/<script>.py` from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from chatbridge.data.templates import render_chat_turn  # noqa: E402
from chatbridge.evaluation.metrics import exact_match, slot_accuracy  # noqa: E402
from chatbridge.synthetic.formats import fill_slots, media_descriptions  # noqa: E402
from chatbridge.synthetic.layout import load_manifest  # noqa: E402
from chatbridge.synthetic.questions import MEDIA_ID_KEYS  # noqa: E402

QA_FILES = {"image_qa": ["image"], "video_qa": ["video"], "audio_qa": ["audio"]}
JOINT_FILES = {"tia_qa": ["image", "audio"], "tva_qa": ["video", "audio"]}


def prompt(row: dict, modalities: list[str], descriptions: dict[str, dict[str, str]]) -> str:
    """The inference prompt of one question, each medium's `<query>` slot filled with its description."""
    text = render_chat_turn(modalities, row.get("instruction") or row["question"], first=True)
    return fill_slots(text, modalities, [row[MEDIA_ID_KEYS[kind]] for kind in modalities], descriptions)


@torch.inference_mode()
def answer(model, tokenizer, text: str, max_new_tokens: int = 8) -> str:  # noqa: ANN001 - a HF model and tokenizer
    ids = tokenizer(text, return_tensors="pt").input_ids
    output = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True).split("###")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world", type=Path, default=REPO / ".cache" / "synthetic_world")
    parser.add_argument("--llm", type=Path, default=REPO / ".cache" / "tiny_llama")
    parser.add_argument("--split", choices=("test", "eval"), default="test", help="test: training combinations")
    parser.add_argument("--per-type", type=int, default=40, help="questions asked per file and question type")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = AutoTokenizer.from_pretrained(args.llm)
    model = AutoModelForCausalLM.from_pretrained(args.llm).eval()
    manifest = load_manifest(args.world)
    attributes = json.loads(manifest.path("attributes").read_text())
    descriptions = media_descriptions(attributes, args.split)
    print(f"stand-in {args.llm}, {args.split} split of {args.world}, up to {args.per_type} questions per type\n")
    print("| file | type | questions | exact match | slot accuracy |\n|---|---|---|---|---|")
    for name, modalities in {**QA_FILES, **JOINT_FILES}.items():
        by_type: dict[str, list[dict]] = defaultdict(list)
        for row in json.loads(manifest.path(f"{args.split}/{name}").read_text()):
            if len(by_type[row["type"]]) < args.per_type:
                by_type[row["type"]].append(row)
        for question_type, rows in by_type.items():
            given = [answer(model, tokenizer, prompt(row, modalities, descriptions)) for row in rows]
            exact = sum(exact_match(g, row["answer"]) for g, row in zip(given, rows, strict=True)) / len(rows)
            slots = sum(slot_accuracy(g, row["answer"]) for g, row in zip(given, rows, strict=True)) / len(rows)
            print(f"| {name} | {question_type} | {len(rows)} | {100 * exact:.1f} | {100 * slots:.1f} |", flush=True)


if __name__ == "__main__":
    main()
