"""The authors' VALOR-style data-opts JSON (docs/reference/chatbridge.md §4.1) -> our `DatasetConfig`s, as is.

This is the only place that parses the reference's task codes (`ti`, `tva-conv`, ...): at the file boundary they
become an explicit `modalities` list, a `task` and a `builder`, and nothing downstream ever tests substrings of a
task name (§7.8).

Conversion rules (each a choice where the reference's semantics do not map one to one):

* One `DatasetConfig` per (dataset of a group, task alternative). The key is the dataset's `name`, with
  `--<task>` appended when the group's `task` has `%`-separated alternatives (the reference drew one per batch;
  here each alternative is its own dataset, so the mixture draws among them with equal shares).
* `steps` is the group's sampling weight; it is split evenly over the group's datasets and task alternatives.
  The reference concatenated a group's datasets, i.e. split in proportion to their lengths; reading every
  annotation file here to count rows would make loading a config as slow as building the data, so groups with
  several datasets log a warning instead. Groups with `epoch` instead of `steps` are refused (the weight would
  need the dataset length).
* `batch_size` is the reference's GLOBAL batch (per GPU = batch_size // world size); it is kept as the
  per-process `DatasetConfig.batch_size`, which is the same thing for world size 1. Divide it by the number of
  processes for multi-GPU runs.
* Stage-1 groups (code without a `-` suffix) use the `caption_json` builder; all others `multis_json`. Stage-1
  `ti` on a `datatype: video` dataset is a video (WebVid), as in the reference.
* `video_resolution` -> `image_size`; `video_encoder_type` starting with `clip`/`evaclip` (or absent) keeps the
  CLIP mean/std, anything else uses ImageNet's; `video_transforms: crop_flip` -> `augment`;
  `video_sample_num` -> `num_frames` (video only); `audio_sample_num` -> `num_audio_segments` (audio only);
  `audio_melbins`, `audio_target_length` -> `num_mel_bins`, `target_length`. Absent fields are filled from the
  routed encoders like any dataset's (a value that contradicts an encoder is an error). `data_format` is
  accepted but not needed: media ids resolve to frame folders or video files alike. `n_workers`,
  `gradient_accumulation_steps` and `dataset_mix_type` belong to the run, not to a dataset.
* Unsupported settings raise: `zh: true` (broken in the reference, §2.3.1) and AST audio front ends.
* Relative paths resolve against the JSON's folder. Prompted tasks (cap, qa, ocr) get `prompts`: the file passed
  in, else `task_prompt.json` next to the opts file if there is one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from chatbridge.config import DatasetConfig, Modality, ProcessorConfig, Task
from chatbridge.errors import UserError

logger = logging.getLogger(__name__)

PROMPTS_NAME = "task_prompt.json"
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
CLIP_ENCODER_PREFIXES = ("clip", "evaclip")
TASK_SUFFIXES: dict[str, Task] = {
    "": "caption",
    "cap": "caption",
    "shortqa": "shortqa",
    "normalqa": "normalqa",
    "ocr": "ocr",
    "det": "det",
    "rea": "rea",
    "conv": "conv",
}
"""Reference task suffix -> our task; "" is a stage-1 caption code such as `ti`."""
PROMPTED_TASKS = ("caption", "shortqa", "normalqa", "ocr")


def code_modalities(code: str, datatype: str, where: str) -> list[Modality]:
    """Modalities of a task code, given the dataset's `datatype` (which decides image vs video for `ti`).

    Raises:
        ValueError: unknown code, or a datatype that contradicts it; names `where`.
    """
    visual = {"image": "image", "video": "video"}.get(datatype)
    by_code: dict[str, tuple[list[Modality], bool]] = {
        "ti": ([visual] if visual else [], visual is not None),
        "tv": (["video"], datatype == "video"),
        "ta": (["audio"], True),
        "tva": (["video", "audio"], datatype == "video"),
        "tia": (["image", "audio"], datatype == "image"),
    }
    if code not in by_code:
        raise UserError(f"{where}: unknown task code {code!r}; known: {sorted(by_code)}")
    modalities, consistent = by_code[code]
    if not consistent:
        raise UserError(f"{where}: task code {code!r} does not fit datatype {datatype!r}")
    return modalities


def parse_task(task: str, datatype: str, where: str) -> tuple[list[Modality], Task, str]:
    """One task alternative, e.g. `tva-conv` -> ([video, audio], "conv", "multis_json")."""
    code, _, suffix = task.partition("-")
    if suffix not in TASK_SUFFIXES or (task.endswith("-") and not suffix):
        raise UserError(f"{where}: unknown task {task!r}; suffixes: {sorted(s for s in TASK_SUFFIXES if s)}")
    modalities = code_modalities(code, datatype, where)
    if not suffix and len(modalities) != 1:
        raise UserError(f"{where}: stage-1 captioning takes one modality, {task!r} has {modalities}")
    return modalities, TASK_SUFFIXES[suffix], "caption_json" if not suffix else "multis_json"


def processor_config(opts: dict[str, Any], group: dict[str, Any], dataset: dict, modalities: list) -> ProcessorConfig:
    """The media preprocessing of one dataset from the top-level, group and dataset fields."""
    fields: dict[str, Any] = {}
    if "video_resolution" in opts:
        fields["image_size"] = opts["video_resolution"]
    encoder = opts.get("video_encoder_type")
    if encoder is not None and not str(encoder).startswith(CLIP_ENCODER_PREFIXES):
        fields.update(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    if dataset.get("video_transforms", "none") == "crop_flip":
        fields["augment"] = True
    if "video" in modalities and "video_sample_num" in group:
        fields["num_frames"] = group["video_sample_num"]
    if "audio" in modalities:
        optional = {"audio_melbins": "num_mel_bins", "audio_target_length": "target_length"}
        fields.update({ours: opts[theirs] for theirs, ours in optional.items() if theirs in opts})
        if "audio_sample_num" in group:
            fields["num_audio_segments"] = group["audio_sample_num"]
    return ProcessorConfig(**fields)


def media_roots(dataset: dict[str, Any], modalities: list[Modality], folder: Path, where: str) -> dict[str, str]:
    """`image_root` / `video_root` / `audio_root` from the dataset's `video` and `audio` folders."""
    roots = {}
    for modality in modalities:
        key = "audio" if modality == "audio" else "video"
        if not dataset.get(key):
            raise UserError(f"{where}: dataset {dataset.get('name')!r} needs a {key!r} folder for {modality} media")
        roots[f"{modality}_root"] = str(folder / dataset[key])
    return roots


def check_top_level(opts: Any, path: Path) -> list[dict[str, Any]]:
    """The `data_cfg.train` groups, after refusing settings this implementation does not support."""
    if not isinstance(opts, dict) or not isinstance(opts.get("data_cfg", {}).get("train"), list):
        raise UserError(f"{path}: expected an object with data_cfg.train (a list of loader groups)")
    if opts.get("zh"):
        raise UserError(f"{path}: zh mode is not supported (it never produced supervised tokens, §2.3.1)")
    audio_encoder = opts.get("audio_encoder_type", "beat")
    if audio_encoder != "beat":
        raise UserError(f"{path}: audio_encoder_type {audio_encoder!r} is not supported; only 'beat' (BEATs fbank)")
    return opts["data_cfg"]["train"]


def group_configs(
    opts: dict[str, Any], group: dict[str, Any], folder: Path, prompts: str | None, where: str
) -> dict[str, DatasetConfig]:
    """The `DatasetConfig`s of one loader group, keyed by name."""
    if "steps" not in group or "batch_size" not in group:
        raise UserError(f"{where}: needs 'steps' (sampling weight; 'epoch' is not supported) and 'batch_size'")
    datasets, tasks = group.get("datasets") or [], str(group.get("task", "")).split("%")
    if not datasets:
        raise UserError(f"{where}: no datasets")
    if len(datasets) > 1:
        logger.warning("%s: %d datasets share the group's weight evenly, not by length", where, len(datasets))
    configs = {}
    for dataset in datasets:
        for task in tasks:
            modalities, our_task, builder = parse_task(task, dataset.get("datatype", ""), where)
            name = dataset.get("name") or Path(dataset["txt"]).stem
            configs[name if len(tasks) == 1 else f"{name}--{task}"] = DatasetConfig(
                builder=builder,
                modalities=modalities,
                task=our_task,
                annotations=str(folder / dataset["txt"]),
                prompts=prompts if our_task in PROMPTED_TASKS and builder == "multis_json" else None,
                weight=float(group["steps"]) / (len(datasets) * len(tasks)),
                batch_size=int(group["batch_size"]),
                processor=processor_config(opts, group, dataset, modalities),
                **media_roots(dataset, modalities, folder, where),
            )
    return configs


def datasets_from_valor_opts(path: str | Path, prompts: str | Path | None = None) -> dict[str, DatasetConfig]:
    """Reads a data-opts JSON into named `DatasetConfig`s (see the module docstring for every conversion rule).

    Args:
        path: The data-opts JSON.
        prompts: The `task_prompt.json` for prompted stage-2 tasks; None = `task_prompt.json` beside `path`, if any.

    Raises:
        ValueError: unknown task codes, unsupported settings, missing folders or duplicate names; the message
            names the group (`data_cfg.train[i]`) and its task.
    """
    path = Path(path)
    folder = path.parent
    if prompts is None and (folder / PROMPTS_NAME).is_file():
        prompts = folder / PROMPTS_NAME
    opts = json.loads(path.read_text(encoding="utf-8"))
    configs: dict[str, DatasetConfig] = {}
    for number, group in enumerate(check_top_level(opts, path)):
        where = f"{path}: data_cfg.train[{number}] (task {group.get('task')!r})"
        for name, config in group_configs(opts, group, folder, str(prompts) if prompts else None, where).items():
            if name in configs:
                raise UserError(f"{where}: dataset name {name!r} is used twice")
            configs[name] = config
    return configs
