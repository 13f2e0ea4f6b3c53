"""Clickable examples for the chat, taken from the synthetic world when the config has one (the tiny default).

Why: a newcomer who runs the demo on the tiny default has no media of the world at hand; one click on an example
sends a question with its files and shows an answer.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

Example = dict[str, Any]
"""A `gr.Chatbot` example: `{"text", "files", "display_text", "icon"?}`."""


def world_examples(world: str | Path | None) -> list[Example]:
    """An image, a sound and an image with a sound from the world's held-out split, each with a question.

    Held out, so that they show what the model does on media it never trained on. Read from the world's manifest
    and annotation files rather than through `chatbridge.synthetic`, which nothing in the package imports. Empty
    when there is no complete world (its manifest is written last) or it cannot be read.
    """
    if world is None or not (Path(world) / "MANIFEST.json").is_file():
        return []
    root = Path(world)
    try:
        files = json.loads((root / "MANIFEST.json").read_text())["files"]
        image = _first_row(root / files["eval/image_cap"])
        audio = _first_row(root / files["eval/audio_cap"])
        joint = _first_row(root / files["eval/tia_qa"])
        images, audios = root / files["images"], root / files["audios"]
        examples = [
            _example("Describe the image in one short sentence.", [images / image["image_id"]]),
            _example("How many beeps are there?", [audios / f"{audio['audio']}.wav"]),
            _example(joint["question"], [images / joint["image_id"], audios / f"{joint['audio']}.wav"]),
        ]
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        logger.warning("no examples: cannot read the synthetic world in %s (%s)", root, error)
        return []
    return [example for example in examples if all(Path(path).is_file() for path in example["files"])]


def _first_row(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())[0]


def _example(question: str, files: list[Path]) -> Example:
    """One example: the question and files it sends, labelled with the files' names (an image shows as its icon)."""
    example: Example = {
        "text": question,
        "files": [str(path) for path in files],
        "display_text": f"{question} [{', '.join(path.name for path in files)}]",
    }
    if files[0].suffix == ".png":
        example["icon"] = str(files[0])
    return example
