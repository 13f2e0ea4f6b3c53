"""Every user mistake ends in one line and exit code 2; memory stays bounded per medium; dry runs need no weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image

from chatbridge.config import ProcessorConfig
from chatbridge.data.datasets.base import build_processor
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.processors.image import decode_image
from tests.conftest import REPO, TINY_PRETRAIN
from tests.tiny_sizes import SMALL

STAGE2 = REPO / "instructiontuning_configs" / "chatbridge_instructtuning.yaml"
STAGE1 = REPO / "train_configs" / "chatbridge_pretrain.yaml"


def entry_point(name: str):
    """The `main` of a top-level script, imported as a module."""
    spec = importlib.util.spec_from_file_location(f"entry_{name}", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run(name: str, arguments: list[str], monkeypatch, capsys) -> tuple[int, list[str], str]:
    """Run an entry point in this process: (exit code, stderr lines, stdout)."""
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *arguments])
    try:
        code = entry_point(name)()
    except SystemExit as stop:  # config errors stop at parsing time, like argparse's own
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.err.strip().splitlines(), captured.out


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("datasets.image_captions.batch_size=0", "datasets.image_captions.batch_size must be >= 1, got 0"),
        ("run.grad_accum_steps=0", "run.grad_accum_steps must be >= 1, got 0"),
        ("run.max_steps=-5", "run.max_steps must be >= 1, got -5"),
        ("run.log_every=0", "run.log_every must be >= 1, got 0"),
        ("run.init_lr=-0.001", "run.init_lr must be >= 0, got -0.001"),
        ("run.warmup_steps=4000", "run.warmup_steps must be <= run.max_steps (3000), got 4000"),
        ("generation.top_p=1.5", "generation.top_p must be in (0, 1], got 1.5"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_code_2(option, message, monkeypatch, capsys):
    code, err, _ = run("train", ["--cfg-path", str(TINY_PRETRAIN), "--options", option], monkeypatch, capsys)
    assert (code, err) == (2, [f"error: --options: {message}"])


def test_missing_data_and_unwritable_outputs_are_named_before_any_model_is_built(
    tmp_path, tiny_llm_dir, monkeypatch, capsys
):
    from chatbridge.synthetic.world import SCALES, ensure_world

    world = ensure_world(tmp_path / "world", sizes=SCALES["tiny"]).root
    base = [
        "--cfg-path",
        str(TINY_PRETRAIN),
        "--options",
        *SMALL,  # no stand-in towers to pretrain: the inputs must be checked before anything is made
        f"synthetic.world={world}",
        f"model.llm.path={tiny_llm_dir}",
        "synthetic.tiny_llm=null",
        f"run.output_dir={tmp_path / 'out'}",
    ]
    (tmp_path / "a_file").write_text("")
    cases = [
        (
            "datasets.image_captions.annotations=" + str(tmp_path / "none.json"),
            f"datasets.image_captions.annotations: {tmp_path / 'none.json'} does not exist",
        ),
        (
            "datasets.audio_captions.audio_root=" + str(tmp_path / "nowhere"),
            f"datasets.audio_captions.audio_root: {tmp_path / 'nowhere'} does not exist",
        ),
        (f"run.output_dir={tmp_path / 'a_file'}", f"run.output_dir: {tmp_path / 'a_file'} exists and is not a folder"),
        ("model.checkpoint=" + str(tmp_path / "ckpt"), f"model.checkpoint: {tmp_path / 'ckpt'} does not exist"),
    ]
    monkeypatch.setattr("chatbridge.models.setup.build_model_for_training", _must_not_build)
    for option, message in cases:
        code, err, _ = run("train", [*base, option], monkeypatch, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {message}"), (option, err)


def _must_not_build(*args, **kwargs):
    raise AssertionError("the model was built before the inputs were checked")


@pytest.mark.parametrize("config", [STAGE1, STAGE2], ids=["stage1", "stage2"])
def test_the_full_dry_runs_print_their_tables_with_nothing_downloaded(config, monkeypatch, capsys):
    code, err, out = run("train", ["--cfg-path", str(config), "--dry-run", "--world-size", "8"], monkeypatch, capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "trainable parameters: 110,206,848"
    assert lines[1] == "frozen parameters:    14,092,074,992"  # EVA-g + BEATs + Vicuna-13B (shipped shape)
    assert sum(line.startswith("fsdp=") for line in lines) == 4


def test_an_unknown_shipped_llm_shape_is_named(monkeypatch, capsys):
    options = ["--options", "model.llm.architecture=vicuna-70b"]
    code, err, _ = run("train", ["--cfg-path", str(STAGE1), "--dry-run", *options], monkeypatch, capsys)
    assert code == 2 and err == [
        "error: model.llm.architecture: unknown 'vicuna-70b'; shipped: ['vicuna-13b', 'vicuna-7b']"
    ]


# ----------------------------------------------------------------------------------------------- memory bounds


def test_an_oversized_png_is_refused_before_decoding(tmp_path):
    Image.new("RGB", (3000, 3000), (10, 20, 30)).save(tmp_path / "big.png")  # 9 MP of one colour: a small file
    with pytest.raises(MediaError, match=r"too_large media .*big.png.*3000x3000 pixels, over processor."):
        decode_image(tmp_path / "big.png", max_pixels=1_000_000)


def test_an_oversized_jpeg_is_decoded_at_a_reduced_size(tmp_path):
    Image.new("RGB", (3000, 3000), (10, 20, 30)).save(tmp_path / "big.jpg")
    pixels = decode_image(tmp_path / "big.jpg", max_pixels=1_000_000)
    assert tuple(pixels.shape) == (3, 750, 750)  # JPEG's 1/4 scale, the first under the limit
    assert tuple(decode_image(tmp_path / "big.jpg").shape) == (3, 3000, 3000)  # no limit: the reference's decode


def test_a_video_with_huge_frames_is_decoded_scaled_down(tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "big.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=4)
        stream.width, stream.height = 640, 480
        for index in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((480, 640, 3), index * 40, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    settings = _resolved(max_image_pixels=100_000)
    processor = build_processor("video", settings)
    reader = processor.open_reader(path)
    assert reader[0].shape[0] * reader[0].shape[1] <= 100_000
    assert tuple(processor(path).shape) == (4, 3, settings.image_size, settings.image_size)


def test_audio_longer_than_the_limit_is_refused_before_decoding(tmp_path):
    soundfile.write(tmp_path / "long.wav", np.zeros(16000 * 30, np.float32), 16000)
    processor = build_processor("audio", _resolved(max_audio_seconds=10))
    with pytest.raises(MediaError, match=r"too_large media .*long.wav.*30 s, over processor.max_audio_seconds = 10"):
        processor(tmp_path / "long.wav")


def _resolved(**fields) -> ProcessorConfig:
    """The tiny preset's processor with some fields changed."""
    from chatbridge.config_loading import load_config

    processor = load_config(TINY_PRETRAIN, require_paths=False).processor
    for key, value in fields.items():
        setattr(processor, key, value)
    return processor


def test_every_entry_point_turns_a_user_error_into_one_line(tmp_path, monkeypatch, capsys):
    """evaluate, chat, demo and convert share the one-line contract (a missing config file, a bad key)."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  model_type: tiny\n  connector:\n    num_query_tokn: 8\n")
    for name in ("evaluate", "chat"):
        code, err, _ = run(name, ["--cfg-path", str(bad)], monkeypatch, capsys)
        assert code == 2 and err == [
            f"error: {bad}: unknown key 'num_query_tokn' in section 'model.connector' "
            "(did you mean 'num_query_tokens'?)"
        ], name
    code, err, _ = run("evaluate", ["--cfg-path", str(Path(tmp_path / "missing.yaml"))], monkeypatch, capsys)
    assert code == 2 and err == [f"error: config file not found: {tmp_path / 'missing.yaml'}"]
