"""The synthetic world: identical bytes per seed, manifest-last completion, integrity, held-out split, formats.

The held-out question files, their types and chance levels are tested in `test_synthetic_questions.py`."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import runpy
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from chatbridge.synthetic import world as synthetic
from chatbridge.synthetic.world import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    SCALES,
    WorldManifest,
    WorldSizes,
    ensure_world,
    generate_world,
    load_manifest,
)

TINY = SCALES["tiny"]
SCRIPT = Path(__file__).resolve().parents[1] / "dataset" / "make_synthetic_world.py"
STAGE2_TASK = re.compile(r"^t(i|v|a|va|ia)-(cap|shortqa|conv)$")
REQUIRED_PROMPTS = {"ti-cap", "ti-shortqa", "tv-cap", "tv-shortqa", "ta-cap", "ta-shortqa", "tva-cap"}


def _hashes(root: Path) -> dict[str, str]:
    """sha256 of every file the generator owns (the lock file and foreign files are left out)."""
    owned = {*synthetic.OWNED_NAMES, MANIFEST_NAME}
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] in owned
    }


def _load(manifest: WorldManifest, name: str) -> list | dict:
    return json.loads(manifest.path(name).read_text())


def _training_rows(manifest: WorldManifest) -> list[tuple[dict, dict]]:
    """(dataset entry, row) for every row of every file the data-opts JSONs point at, paths resolved as documented."""
    pairs = []
    for opts_name in ("opts_stage1", "opts_stage2"):
        opts_path = manifest.path(opts_name)
        for group in json.loads(opts_path.read_text())["data_cfg"]["train"]:
            for dataset in group["datasets"]:
                rows = json.loads((opts_path.parent / dataset["txt"]).read_text())
                pairs += [({**dataset, "task": group["task"], "base": opts_path.parent}, row) for row in rows]
    return pairs


@pytest.fixture(scope="module")
def default_world(tmp_path_factory: pytest.TempPathFactory) -> WorldManifest:
    return generate_world(tmp_path_factory.mktemp("default_world"), seed=0)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> WorldManifest:
    return generate_world(tmp_path_factory.mktemp("tiny_world"), seed=0, sizes=TINY)


def test_generation_is_byte_identical(default_world: WorldManifest, tmp_path: Path) -> None:
    manifest = default_world
    again = generate_world(tmp_path / "again", seed=0)
    assert _hashes(again.root) == _hashes(manifest.root)
    other_seed = generate_world(tmp_path / "other", seed=1, sizes=TINY)
    tiny_seed0 = generate_world(tmp_path / "seed0", seed=0, sizes=TINY)
    assert _hashes(other_seed.root) != _hashes(tiny_seed0.root)


def test_manifest_is_written_last_and_round_trips(tiny_world: WorldManifest) -> None:
    manifest_time = (tiny_world.root / MANIFEST_NAME).stat().st_mtime_ns
    assert all(path.stat().st_mtime_ns <= manifest_time for path in tiny_world.root.rglob("*") if path.is_file())
    loaded = load_manifest(tiny_world.root)
    assert loaded == tiny_world
    assert loaded.format_version == FORMAT_VERSION and loaded.sizes == TINY
    assert all(tiny_world.path(name).exists() for name in tiny_world.files)
    with pytest.raises(KeyError, match="unknown world file"):
        tiny_world.path("nope")


def test_interrupted_generation_is_redone(
    tiny_world: WorldManifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "world"

    def crash(*args: object) -> None:
        raise RuntimeError("simulated crash after the media were written")

    monkeypatch.setattr(synthetic, "write_text", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_world(root, seed=0, sizes=TINY)
    assert (root / "images").is_dir() and not (root / MANIFEST_NAME).exists()
    monkeypatch.undo()
    ensure_world(root, seed=0, sizes=TINY)
    assert _hashes(root) == _hashes(tiny_world.root)


def test_deleted_manifest_triggers_regeneration(tiny_world: WorldManifest, tmp_path: Path) -> None:
    root = tmp_path / "world"
    generate_world(root, seed=0, sizes=TINY)
    (root / MANIFEST_NAME).unlink()
    (root / "images" / "img_00000.png").unlink()
    ensure_world(root, seed=0, sizes=TINY)
    assert _hashes(root) == _hashes(tiny_world.root)


def test_complete_world_is_reused(tiny_world: WorldManifest, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("a complete world must not be regenerated")

    monkeypatch.setattr(synthetic, "_generate", fail)
    assert ensure_world(tiny_world.root, seed=0, sizes=TINY) == tiny_world


def test_other_seed_sizes_or_version_is_replaced_not_mixed(tiny_world: WorldManifest, tmp_path: Path) -> None:
    root = tmp_path / "world"
    generate_world(root, seed=0, sizes=dataclasses.replace(TINY, images=20, videos=9))
    (root / "notes.txt").write_text("not ours")
    ensure_world(root, seed=0, sizes=TINY)
    assert _hashes(root) == _hashes(tiny_world.root)  # the extra images and videos are gone
    assert (root / "notes.txt").read_text() == "not ours"

    assert ensure_world(root, seed=1, sizes=TINY).seed == 1
    assert _hashes(root) == _hashes(generate_world(tmp_path / "seed1", seed=1, sizes=TINY).root)

    manifest_path = root / MANIFEST_NAME
    manifest_path.write_text(
        manifest_path.read_text().replace(f'"format_version": {FORMAT_VERSION}', '"format_version": 0')
    )
    assert ensure_world(root, seed=1, sizes=TINY).format_version == FORMAT_VERSION
    assert load_manifest(root).format_version == FORMAT_VERSION


def test_sizes_are_validated() -> None:
    with pytest.raises(ValueError, match="images"):
        WorldSizes(images=0)
    with pytest.raises(ValueError, match="videos_with_audio"):
        WorldSizes(videos=2, videos_with_audio=3)
    with pytest.raises(ValueError, match="videos_with_audio must be >= 0"):
        WorldSizes(videos_with_audio=-1)
    assert WorldSizes().videos_with_audio == 0  # the default world pairs no media in training


def _frame_folder_ok(folder: Path) -> bool:
    names = sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []
    return names == [f"img_{index:04d}.jpg" for index in range(1, synthetic.NUM_FRAMES + 1)]


def test_every_training_row_refers_to_existing_media(default_world: WorldManifest) -> None:
    manifest = default_world
    pairs = _training_rows(manifest)
    for dataset, row in pairs:
        media_id = row["video_id"] if "video_id" in row else row["image_id"]
        base = dataset["base"]
        if dataset["datatype"] == "image":
            assert (base / dataset["video"] / media_id).is_file(), media_id
        elif "video" in dataset:
            assert _frame_folder_ok(base / dataset["video"] / media_id), media_id
        if "audio" in dataset:
            assert (base / dataset["audio"] / f"{media_id}.wav").is_file(), media_id
    referenced = {dataset["txt"] for dataset, _ in pairs}
    training_files = {path for name, path in manifest.files.items() if name.startswith(("stage1/", "stage2/"))}
    assert referenced == training_files


def test_every_eval_row_refers_to_existing_media(default_world: WorldManifest) -> None:
    manifest = default_world
    root = manifest.root
    names = [name for name in manifest.files if name.startswith(("test/", "eval/"))]
    assert len(names) == 16  # 8 files per evaluation split
    for name in names:
        for row in _load(manifest, name):
            if "image_id" in row:
                assert (root / "images" / row["image_id"]).is_file()
            if "video_id" in row:
                assert _frame_folder_ok(root / "frames" / row["video_id"])
            if "audio" in row:
                assert (root / "audios" / f"{row['audio']}.wav").is_file()


def _combo(kind: str, attributes: dict) -> tuple:
    if kind == "image":
        return attributes["shape"], attributes["colour"]
    if kind == "video":
        return attributes["shape"], attributes["direction"]
    return attributes["count"], attributes["pitch"], attributes["timbre"]


def _eval_media(manifest: WorldManifest) -> set[tuple[str, str]]:
    media = set()
    for name in (name for name in manifest.files if name.startswith("eval/")):
        for row in _load(manifest, name):
            media |= {(kind, row[key]) for kind, key in (("image", "image_id"), ("video", "video_id")) if key in row}
            media |= {("audio", row["audio"])} if "audio" in row else set()
    return media


def _training_media(manifest: WorldManifest) -> set[tuple[str, str]]:
    media = set()
    for dataset, row in _training_rows(manifest):
        media_id = row["video_id"] if "video_id" in row else row["image_id"]
        if "video" in dataset:
            media.add((dataset["datatype"], media_id))
        if "audio" in dataset:
            media.add(("audio", media_id))
    return media


def test_held_out_split_is_disjoint_from_training(default_world: WorldManifest) -> None:
    manifest = default_world
    attributes = _load(manifest, "attributes")
    train, evaluation = _training_media(manifest), _eval_media(manifest)
    assert {media_id for _, media_id in train}.isdisjoint(media_id for _, media_id in evaluation)
    held_out = {"image": synthetic.HELD_OUT_IMAGE, "video": synthetic.HELD_OUT_VIDEO, "audio": synthetic.HELD_OUT_AUDIO}
    for kind in ("image", "video", "audio"):
        train_combos = {_combo(kind, attributes[kind][i]) for k, i in train if k == kind}
        eval_combos = {_combo(kind, attributes[kind][i]) for k, i in evaluation if k == kind}
        assert eval_combos and train_combos.isdisjoint(eval_combos)
        assert eval_combos <= held_out[kind]
        for position in range(len(next(iter(train_combos)))):  # every single value is still seen in training
            assert {combo[position] for combo in train_combos} == {
                combo[position] for combo in eval_combos | train_combos
            }
    assert all(attributes[kind][i]["split"] == "eval" for kind, i in evaluation)


def _is_text_or_texts(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value))


def test_stage1_rows_follow_the_valor_format(default_world: WorldManifest) -> None:
    manifest = default_world
    for name in ("stage1/image", "stage1/video", "stage1/audio"):
        rows = _load(manifest, name)
        assert all(set(row) in ({"video_id", "desc"}, {"video_id", "caption"}) for row in rows)
        texts = [row.get("desc", row.get("caption")) for row in rows]
        assert all(_is_text_or_texts(text) for text in texts)
        assert any("caption" in row for row in rows) and any(isinstance(text, list) for text in texts)


def _check_stage2_row(task: str, id_key: str, row: dict) -> None:
    kind = task.split("-")[1]
    if kind == "cap":
        assert set(row) == {id_key, "caption"} and _is_text_or_texts(row["caption"])
    elif kind == "shortqa":
        assert set(row) == {"question_id", id_key, "question", "answer"}
        question, answer = row["question"], row["answer"]
        assert (isinstance(question, str) and isinstance(answer, str)) or len(question) == len(answer)
    else:
        assert set(row) == {"id", id_key, "conversations"}
        turns = row["conversations"]
        assert 4 <= len(turns) <= 6 and [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
        tags = {"ti": "<image>\n", "tv": "<video>\n", "ta": "<audio>\n", "tva": "<video>\n<audio>\n"}[
            task.split("-")[0]
        ]
        assert turns[0]["value"].startswith(tags)
        assert not any("<" in turn["value"] for turn in turns[1:])


SINGLE_MODALITY_TASKS = {"ti-cap", "ti-shortqa", "ti-conv", "tv-cap", "tv-shortqa", "tv-conv", "ta-cap", "ta-shortqa"}


def _stage2_tasks(manifest: WorldManifest) -> set[str]:
    tasks = set()
    for dataset, row in _training_rows(manifest):
        if dataset["txt"].startswith("annotations/stage2/"):
            assert STAGE2_TASK.match(dataset["task"]), dataset["task"]
            tasks.add(dataset["task"])
            _check_stage2_row(dataset["task"], "image_id" if dataset["datatype"] == "image" else "video_id", row)
    return tasks


def test_stage2_rows_follow_the_multis_format(default_world: WorldManifest, tiny_world: WorldManifest) -> None:
    assert _stage2_tasks(default_world) == {*SINGLE_MODALITY_TASKS, "ta-conv"}
    assert _stage2_tasks(tiny_world) == {*SINGLE_MODALITY_TASKS, "ta-conv", "tva-cap", "tva-conv"}


def test_no_stage2_training_file_pairs_two_media(default_world: WorldManifest) -> None:
    """The proof of issue 15: joint answers must come from aligning each modality on its own."""
    stage2 = [name for name in default_world.files if name.startswith("stage2/")]
    assert stage2 and not any(name.startswith("stage2/av_") for name in stage2)
    for dataset, row in _training_rows(default_world):
        assert not ("video" in dataset and "audio" in dataset), dataset["name"]
        assert sum(key in row for key in ("image_id", "video_id", "audio")) == 1
        conversations = row.get("conversations", [])
        assert sum(tag in turn["value"] for turn in conversations for tag in ("<image>", "<video>", "<audio>")) <= 1
    assert default_world.counts["background_audios"] == 0


def test_task_prompts_and_opts_follow_the_reference_format(default_world: WorldManifest) -> None:
    manifest = default_world
    prompts = _load(manifest, "task_prompt")
    assert REQUIRED_PROMPTS <= set(prompts)
    assert all(_is_text_or_texts(templates) and isinstance(templates, list) for templates in prompts.values())
    assert all("<QUESTION>" in template for task in prompts if "qa" in task for template in prompts[task])
    for name in ("opts_stage1", "opts_stage2"):
        opts = _load(manifest, name)
        assert opts["audio_melbins"] == 64 and opts["audio_target_length"] == 1024
        assert opts["video_resolution"] == synthetic.IMAGE_SIZE and opts["data_cfg"]["val"] == []
        for group in opts["data_cfg"]["train"]:
            assert {"datasets", "task", "steps", "batch_size", "n_workers"} <= set(group)
            assert group["data_format"] == "frame" and group["steps"] > 0
            for dataset in group["datasets"]:
                assert set(dataset) <= {"name", "txt", "video", "audio", "datatype"}
                assert {"name", "txt", "datatype"} <= set(dataset)
                assert ("video_sample_num" in group) == ("video" in dataset)
                assert ("audio_sample_num" in group) == ("audio" in dataset)
    assert {group["task"] for group in _load(manifest, "opts_stage1")["data_cfg"]["train"]} == {"ti", "ta"}


def test_media_have_the_documented_properties(tiny_world: WorldManifest) -> None:
    root = tiny_world.root
    attributes = _load(tiny_world, "attributes")
    for image_id in attributes["image"]:
        with Image.open(root / "images" / image_id) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    for video_id in attributes["video"]:
        with Image.open(root / "frames" / video_id / "img_0001.jpg") as frame:
            assert (frame.format, frame.size) == ("JPEG", (64, 64))
    for audio_id, truth in attributes["audio"].items():
        wave, rate = soundfile.read(root / "audios" / f"{audio_id}.wav")
        assert rate == 16_000 and wave.ndim == 1 and 1.0 <= len(wave) / rate <= 3.0
        loudness = np.sqrt((wave[: len(wave) // 160 * 160].reshape(-1, 160) ** 2).mean(axis=1))  # 10 ms frames
        onsets = np.diff(np.r_[0, (loudness > 0.05).astype(int)]) == 1
        assert int(onsets.sum()) == truth["count"], audio_id


def test_cli_writes_the_same_world(tiny_world: WorldManifest, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    main = runpy.run_path(str(SCRIPT))["main"]
    main(["--out", str(tmp_path / "cli"), "--seed", "0", "--scale", "tiny"])
    assert "stage2/av_conv" in capsys.readouterr().out
    assert _hashes(tmp_path / "cli") == _hashes(tiny_world.root)
