"""The synthetic world's text files in the reference formats, and the corpus the stand-in LM learns from.

``task_prompt.json`` follows docs/reference/chatbridge.md §4.2 (task name -> instruction templates, with our own
wording), the data-opts JSONs follow VALOR's (§4.1), and ``world_texts`` renders every training text exactly as
the training templates do, for ``chatbridge.synthetic.tiny_llm``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from chatbridge.config import Modality, Task
from chatbridge.data.datasets.base import row_media_id
from chatbridge.data.datasets.captions import row_captions
from chatbridge.data.datasets.instructions import parse_task_fields, prompt_key
from chatbridge.data.datasets.valor_opts import parse_task
from chatbridge.data.templates import (
    QUERY_PLACEHOLDER,
    load_instruction_templates,
    render_caption,
    render_chat_turn,
    render_conversation,
    render_single_turn,
    sample_instruction,
)
from chatbridge.synthetic.annotations import describe
from chatbridge.synthetic.items import AudioItem, ImageItem, Split, VideoItem
from chatbridge.synthetic.layout import (
    ANNOTATIONS_DIR,
    ATTRIBUTES_NAME,
    OPTS_NAMES,
    TASK_PROMPT_NAME,
    WorldManifest,
    load_manifest,
)
from chatbridge.synthetic.media import AUDIOS_DIR, FRAMES_DIR, IMAGE_SIZE, IMAGES_DIR, Geometry

# Our own wording (§4.2 keeps only the key set and the <QUESTION> placeholder of the reference file).
TASK_PROMPTS: dict[str, list[str]] = {
    "ti-cap": [
        "Describe the image in one short sentence.",
        "Write a brief caption for this picture.",
        "What does the image show? Answer in one sentence.",
        "Summarize the content of the image in a few words.",
    ],
    "ti-shortqa": [
        "Look at the image and answer with a single word: <QUESTION>",
        "Answer the question about the picture in one word. <QUESTION>",
        "Based on the image, give a one-word answer to this question: <QUESTION>",
    ],
    "tv-cap": [
        "Describe what happens in the video in one sentence.",
        "Write a short caption for this clip.",
        "Summarize the video briefly.",
        "What is going on in this video? Answer in one sentence.",
    ],
    "tv-shortqa": [
        "Watch the video and answer with a single word: <QUESTION>",
        "Answer the question about the clip in one word. <QUESTION>",
        "Based on the video, give a one-word answer to this question: <QUESTION>",
    ],
    "ta-cap": [
        "Listen to the audio and describe it in one sentence.",
        "Write a short caption for this sound.",
        "What can be heard in this recording? Answer briefly.",
        "Summarize the audio clip in a few words.",
    ],
    "ta-shortqa": [
        "Listen to the audio and answer with a single word: <QUESTION>",
        "Answer the question about the sound in one word. <QUESTION>",
        "Based on the audio, give a one-word answer to this question: <QUESTION>",
    ],
    "tva-cap": [
        "Describe what you see and hear in this video in one sentence.",
        "Write a short caption covering both the picture and the sound.",
        "Summarize the video together with its background audio.",
        "What happens on screen, and what does the soundtrack contain? Answer in one sentence.",
    ],
}

# (annotation key, task, datatype) of every training file a world may have; the stage-2 names follow §4.2's task
# names. The joint ``av_*`` files exist only in worlds whose training videos have audio (never the default one).
STAGE1_FILES = (("stage1/image", "ti", "image"), ("stage1/video", "ti", "video"), ("stage1/audio", "ta", "audio"))
STAGE2_FILES = (
    ("stage2/image_cap", "ti-cap", "image"),
    ("stage2/image_qa", "ti-shortqa", "image"),
    ("stage2/image_conv", "ti-conv", "image"),
    ("stage2/video_cap", "tv-cap", "video"),
    ("stage2/video_qa", "tv-shortqa", "video"),
    ("stage2/video_conv", "tv-conv", "video"),
    ("stage2/audio_cap", "ta-cap", "audio"),
    ("stage2/audio_qa", "ta-shortqa", "audio"),
    ("stage2/audio_conv", "ta-conv", "audio"),
    ("stage2/av_cap", "tva-cap", "video"),
    ("stage2/av_conv", "tva-conv", "video"),
)
VIDEO_SAMPLE_NUM = 4  # frames drawn per video, as in the reference configs
LM_JOINT_KEY = "lm/joint_qa"
"""The stand-in LM's joint questions about training items (``questions.lm_joint_rows``); no bridge trains on it."""


def _loader_group(key: str, task: str, datatype: str, steps: int) -> dict:
    """One VALOR loader group; ``steps`` (the sampling weight) is the file's row count."""
    with_audio = task.startswith("tva")
    dataset: dict[str, str] = {"name": "synthetic_" + key.replace("/", "_"), "txt": f"{ANNOTATIONS_DIR}/{key}.json"}
    if datatype != "audio":
        dataset["video"] = IMAGES_DIR if datatype == "image" else FRAMES_DIR
    if datatype == "audio" or with_audio:
        dataset["audio"] = AUDIOS_DIR
    dataset["datatype"] = datatype
    batch_size = 4 if task.endswith("-conv") else 8  # conversations are ~3x longer
    group = {"datasets": [dataset], "task": task, "steps": steps, "n_workers": 0, "batch_size": batch_size}
    if datatype != "audio":
        group["video_sample_num"] = VIDEO_SAMPLE_NUM if datatype == "video" else 1
    if datatype == "audio" or with_audio:
        group["audio_sample_num"] = 1
    return {**group, "data_format": "frame"}


def _opts(files: Sequence[tuple[str, str, str]], counts: dict[str, int]) -> dict:
    """A data-opts JSON (§4.1) over those of ``files`` the world has; ``video_resolution`` is the media's size."""
    groups = [_loader_group(key, task, kind, counts[key]) for key, task, kind in files if key in counts]
    return {
        "video_resolution": IMAGE_SIZE,
        "video_encoder_type": "clip_vit_large_14_336px",
        "audio_encoder_type": "beat",
        "gradient_accumulation_steps": 1,
        "dataset_mix_type": "random",
        "audio_melbins": 64,
        "audio_target_length": 1024,
        "data_cfg": {"train": groups, "val": []},
    }


def attributes_table(splits: dict[str, Split], geometry: dict[str, dict[str, Geometry]]) -> dict[str, dict[str, dict]]:
    """Ground truth per media kind and id: its split, attributes and rendered ``geometry`` (``media.Geometry``).

    Background audio is listed under its video's id. The geometry lets labels that depend on the rendering (where
    a shape is in one frame, which beeps fall into one audio segment) be computed exactly.
    """
    table: dict[str, dict[str, dict]] = {"image": {}, "video": {}, "audio": {}}
    for split_name, split in splits.items():
        kinds = (("image", split.images), ("video", split.videos), ("audio", split.audios + split.backgrounds))
        for kind, items in kinds:
            for item in items:
                fields = {key: value for key, value in asdict(item).items() if key != "id"}
                table[kind][item.id] = {"split": split_name, **fields, "geometry": geometry[kind][item.id]}
    return table


def write_json(path: Path, content: object) -> None:
    """Indented UTF-8 JSON with a final newline; the same content always gives the same bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")


def write_text(root: Path, annotations: dict[str, list[dict]], attributes: dict) -> dict[str, str]:
    """Write every JSON except the manifest; returns the manifest's ``files`` map."""
    files = {"images": IMAGES_DIR, "frames": FRAMES_DIR, "audios": AUDIOS_DIR}
    for key, rows in annotations.items():
        files[key] = f"{ANNOTATIONS_DIR}/{key}.json"
        write_json(root / files[key], rows)
    counts = {key: len(rows) for key, rows in annotations.items()}
    files["attributes"] = ATTRIBUTES_NAME
    write_json(root / ATTRIBUTES_NAME, attributes)
    files["task_prompt"] = TASK_PROMPT_NAME
    write_json(root / TASK_PROMPT_NAME, TASK_PROMPTS)
    for name, stage_files in zip(OPTS_NAMES, (STAGE1_FILES, STAGE2_FILES), strict=True):
        files[name] = OPTS_NAMES[name]
        write_json(root / files[name], _opts(stage_files, counts))
    return files


# ----------------------------------------------------------------------------------------------- language corpus


def world_texts(root: Path) -> list[str]:
    """Every training text of the world under ``root``, as training and inference render it, with each medium's
    ``<query>`` slot holding a description of that medium in words.

    Why: a tiny frozen LLM must already speak the world's language before a bridge can be trained into it, and
    this is what it learns from (``chatbridge.synthetic.tiny_llm``). A real LLM also reads: told "Given following
    image: a red circle at the top." it answers "red" to "what colour is the shape?". The stand-in learns that only
    from texts whose media slot describes the medium (``describe``: a caption naming every attribute the questions
    ask about), so every slot is filled with one; the bridge's task is then to put what the pixels and waveforms
    show into that slot. Stage-1 captions (every caption of a list) follow their medium's description as training
    follows the soft tokens; stage-2 captions and QA pairs (every choice of a list) become single turns with an
    instruction drawn from ``task_prompt.json`` as training draws it, but from a generator seeded by the file's key,
    so the texts are the same on every call; conversations render whole. Last come the joint questions about
    training items (``lm/joint_qa``), rendered as inference asks them (``render_chat_turn``) and answered "X, Y":
    a real LLM would know how to answer two questions at once, the stand-in knows only what it read. Only training
    items are described; the evaluation files (``test/``, ``eval/``) are never read. Order: files as in
    ``STAGE1_FILES`` then ``STAGE2_FILES``, then ``lm/joint_qa``, rows in file order.
    """
    manifest = load_manifest(Path(root))
    templates = load_instruction_templates(manifest.path("task_prompt"))
    descriptions = media_descriptions(json.loads(manifest.path("attributes").read_text()))
    texts = []
    for key, _, datatype in STAGE1_FILES:
        for row in _rows(manifest, key):
            described = descriptions[datatype][row_media_id(row)]
            texts += [f"{described}. {render_caption(caption)}" for caption in row_captions(row)]
    for key, code, datatype in STAGE2_FILES:
        if key in manifest.files:
            modalities, task = parse_task(code, datatype, key)[:2]
            texts += _stage2_texts(_rows(manifest, key), key, modalities, task, templates, descriptions)
    for row in _rows(manifest, LM_JOINT_KEY):
        prompt = render_chat_turn(row["modalities"], row["question"], first=True)
        ids = [row["image_id" if "image_id" in row else "video_id"], row["audio"]]
        texts.append(fill_slots(f"{prompt}{row['answer']}\n###", row["modalities"], ids, descriptions))
    return texts


def media_descriptions(attributes: dict[str, dict[str, dict]], split: str = "train") -> dict[str, dict[str, str]]:
    """Kind -> medium id -> its description, for the media of ``split`` in the world's attribute table
    (``attributes_table``): the LM's corpus describes training media; evaluation media are described only to measure
    how well the stand-in reads (``benchmarks/stand_in_reading.py``)."""
    kinds = {"image": ImageItem, "video": VideoItem, "audio": AudioItem}
    table: dict[str, dict[str, str]] = {}
    for kind, items in attributes.items():
        table[kind] = {
            media_id: describe(kinds[kind](id=media_id, **{k: v for k, v in row.items() if k in _FIELDS[kind]}))
            for media_id, row in items.items()
            if row["split"] == split
        }
    return table


_FIELDS = {
    kind: {field.name for field in fields(item)} - {"id"}
    for kind, item in (("image", ImageItem), ("video", VideoItem), ("audio", AudioItem))
}


def fill_slots(text: str, modalities: Sequence[str], ids: Sequence[str], descriptions: dict) -> str:
    """Each ``<query>`` slot of ``text`` (one per medium, in order) replaced by that medium's description."""
    for modality, media_id in zip(modalities, ids, strict=True):
        text = text.replace(QUERY_PLACEHOLDER, descriptions[modality][media_id], 1)
    return text


def _rows(manifest: WorldManifest, key: str) -> list[dict]:
    return json.loads(manifest.path(key).read_text())


def _stage2_texts(  # noqa: PLR0913 - one file, how it is read, and what fills its slots
    rows: Sequence[dict],
    key: str,
    modalities: list[Modality],
    task: Task,
    templates: dict[str, list[str]],
    descriptions: dict[str, dict[str, str]],
) -> list[str]:
    """One MULTIS file rendered as training renders it, with instructions drawn from a generator seeded by ``key``
    and each row's media described in its slots (one medium per row in the world's training files)."""
    rng = random.Random(key)  # a str seed is hashed with sha512: the same draws in every process
    texts = []
    for row in rows:
        fields = parse_task_fields(row, task)
        if task == "conv":
            rendered = [render_conversation(tuple(modalities), fields["conversation"])]
        else:
            questions = fields.get("questions") or [None] * len(fields["outputs"])
            rendered = [
                render_single_turn(
                    tuple(modalities), sample_instruction(templates, prompt_key(modalities, task), rng, question), out
                )
                for question, out in zip(questions, fields["outputs"], strict=True)
            ]
        ids = [row_media_id(row)] * len(modalities)
        texts += [fill_slots(text, modalities, ids, descriptions) for text in rendered]
    return texts
