"""The tiny ChatBind's stand-ins: its ImageBind weights and its LLaVA-format data, made from the synthetic world.

* `ensure_tiny_imagebind` writes a tiny ImageBind with RANDOM weights (seeded; not trained) in the key layout of
  Meta's `imagebind_huge.pth` (vision and audio entries), so the tiny preset loads it through the same strict loader
  as the real file.
* `write_llava_world` turns the world's annotation files into LLaVA JSONs under `<world>/llava/`: stage-1
  `chat_{image,video,audio}.json` (LLaVA's CC3M format: a brief-description instruction with the medium's tag, and
  a caption) from the world's caption lists, and stage-2 `instruct_{image,video,audio}.json` (LLaVA's instruct
  format) from its conversations (and `instruct_video_audio.json` for a world that pairs them). ChatBind itself
  trained on images only and met video and audio zero-shot through ImageBind's joint space (§1); a random tiny
  ImageBind has no joint space, so the tiny recipe trains on every modality of the world.

`prepare_chatbind` does both for a config; it runs after the world exists (`chatbridge.synthetic.prepare`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from chatbridge.config import TrainConfig
from chatbridge.data.datasets.base import row_media_id
from chatbridge.data.datasets.captions import row_captions
from chatbridge.data.templates import LLAVA_MEDIA_TAGS
from chatbridge.models.encoders.imagebind import ImageBindConfig, build_imagebind, official_state_dict
from chatbridge.synthetic.world import load_manifest

logger = logging.getLogger(__name__)

LLAVA_DIR = "llava"
BRIEF_INSTRUCTIONS = (
    "Describe the {medium} concisely.",
    "Provide a brief description of the given {medium}.",
    "Summarize the content of the {medium}.",
    "Give a short and clear explanation of the {medium}.",
)
"""Stage-1 instructions in the style of LLaVA's CC3M `chat.json`, one per row in turn."""
MEDIUM_NOUNS = {"image": "image", "video": "video", "audio": "audio clip"}
CAPTION_FILES = {"image": "stage1/image", "video": "stage1/video", "audio": "stage1/audio"}
"""Modality -> the world's caption list (VALOR format), by its manifest name."""
CONVERSATION_FILES = {
    ("image",): "stage2/image_conv",
    ("video",): "stage2/video_conv",
    ("audio",): "stage2/audio_conv",
    ("video", "audio"): "stage2/av_conv",
}
"""Modalities -> the world's conversations (LLaVA messages with media tags, MULTIS ids), by manifest name; a world
without one of them (the default world pairs no media in training) gets no LLaVA file for it."""


def prepare_chatbind(config: TrainConfig) -> None:
    """The LLaVA files of the config's synthetic world and a tiny ImageBind for every encoder that names a missing
    checkpoint; nothing without a synthetic world."""
    if config.synthetic.world is None:
        return
    write_llava_world(Path(config.synthetic.world))
    for encoder in config.model.encoders.values():
        if isinstance(encoder, ImageBindConfig) and encoder.checkpoint:
            ensure_tiny_imagebind(Path(encoder.checkpoint), encoder, config.model.init_seed)


def ensure_tiny_imagebind(path: Path, cfg: ImageBindConfig, seed: int) -> Path:
    """`path` with random weights of `cfg`'s sizes in the official layout, (re)written atomically unless a file of
    exactly these keys and shapes is there."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        weights = official_state_dict(build_imagebind(cfg))
    if path.is_file():
        found = torch.load(path, map_location="cpu", weights_only=True)
        if {k: v.shape for k, v in found.items()} == {k: v.shape for k, v in weights.items()}:
            return path
    logger.info("writing a tiny ImageBind with random weights (official key layout) to %s", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(weights, temporary)
    os.replace(temporary, path)
    return path


def write_llava_world(world: Path) -> dict[str, Path]:
    """Write (or leave, when identical) the LLaVA JSONs of `world`; returns name -> path."""
    manifest = load_manifest(world)
    files = {}
    for modality, source in CAPTION_FILES.items():
        rows = json.loads(manifest.path(source).read_text(encoding="utf-8"))
        files[f"chat_{modality}"] = _write(world, f"chat_{modality}.json", caption_rows(rows, modality))
    for modalities, source in CONVERSATION_FILES.items():
        if source in manifest.files:
            rows = json.loads(manifest.path(source).read_text(encoding="utf-8"))
            name = "instruct_" + "_".join(modalities)
            files[name] = _write(world, f"{name}.json", instruct_rows(rows, modalities))
    return files


def caption_rows(rows: Sequence[dict], modality: str) -> list[dict]:
    """VALOR caption rows -> LLaVA pretraining rows; the tag goes before or after the instruction, alternately."""
    llava = []
    for index, row in enumerate(rows):
        captions = row_captions(row)
        instruction = BRIEF_INSTRUCTIONS[index % len(BRIEF_INSTRUCTIONS)].format(medium=MEDIUM_NOUNS[modality])
        tag = LLAVA_MEDIA_TAGS[modality]
        question = f"{tag}\n{instruction}" if index % 2 else f"{instruction}\n{tag}"
        conversation = [{"from": "human", "value": question}, {"from": "gpt", "value": captions[index % len(captions)]}]
        llava.append({"id": f"{modality}_{index:05d}", modality: row_media_id(row), "conversations": conversation})
    return llava


def instruct_rows(rows: Sequence[dict], modalities: Sequence[str]) -> list[dict]:
    """World conversation rows -> LLaVA instruct rows: the media id under the first modality's key."""
    return [
        {"id": row.get("id", str(index)), modalities[0]: row_media_id(row), "conversations": row["conversations"]}
        for index, row in enumerate(rows)
    ]


def _write(world: Path, name: str, rows: list[dict]) -> Path:
    path = world / LLAVA_DIR / name
    text = json.dumps(rows, indent=1) + "\n"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f"{name}.{os.getpid()}.tmp")
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    return path
