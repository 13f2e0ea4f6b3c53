"""Config loading: merge precedence, validation messages by exact text, shipped YAMLs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from chatbridge import config_loading
from chatbridge.config_loading import ConfigError, load_config, registry_references, save_config

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(
    path
    for folder in ("train_configs", "instructiontuning_configs", "eval_configs")
    for path in (REPO / folder).glob("*.yaml")
)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.fixture
def presets(tmp_path, monkeypatch) -> Path:
    """A private model-preset folder with one preset, `chatbridge_test`."""
    folder = tmp_path / "presets"
    folder.mkdir()
    write(
        folder / "chatbridge_test.yaml",
        "model:\n  connector:\n    name: shared_qformer\n    num_query_tokens: 8\n    num_layers: 3\n",
    )
    monkeypatch.setattr(config_loading, "MODEL_PRESETS_DIR", folder)
    return folder


def test_merge_precedence_defaults_preset_yaml_options(tmp_path, presets):
    run_yaml = write(
        tmp_path / "run.yaml",
        "model:\n  model_type: test\n  connector:\n    num_query_tokens: 16\n    hidden_size: 64\n",
    )
    config = load_config(run_yaml, ["model.connector.hidden_size=128"], require_paths=False)
    connector = config.model.connector
    assert connector.num_heads == 12  # dataclass default, untouched by any layer
    assert connector.num_layers == 3  # model preset over the default
    assert connector.num_query_tokens == 16  # run YAML over the preset
    assert connector.hidden_size == 128  # --options over the run YAML


def test_options_accept_lavis_alternating_form(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\n")
    config = load_config(run_yaml, ["run.init_lr", "1e-5", "run.seed", "7"], require_paths=False)
    assert (config.run.init_lr, config.run.seed) == (1e-5, 7)


def test_unknown_key_names_key_section_file_and_suggestion(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\n  connector:\n    num_query_tokn: 8\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, require_paths=False)
    assert str(error.value) == (
        f"{run_yaml}: unknown key 'num_query_tokn' in section 'model.connector' (did you mean 'num_query_tokens'?)"
    )


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\nrun:\n  zzz: 1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'zzz' in section 'run' \(valid keys: root, output_dir, seed,"):
        load_config(run_yaml, require_paths=False)


def test_unknown_top_level_section_from_options(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, ["modle.arch=x"], require_paths=False)
    assert str(error.value) == "--options: unknown key 'modle' in the top level (did you mean 'model'?)"


def test_unknown_key_inside_a_named_dataset(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\ndatasets:\n  coco:\n    wieght: 2\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, require_paths=False)
    assert str(error.value) == f"{run_yaml}: unknown key 'wieght' in section 'datasets.coco' (did you mean 'weight'?)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("run:\n  init_lr: abc\n", "wrong type for 'run.init_lr': expected float, got 'abc' (str)"),
        ("run:\n  grad_clip: abc\n", "wrong type for 'run.grad_clip': expected float or null, got 'abc' (str)"),
        (
            "model:\n  model_type: test\n  trainable: 3\n",
            "wrong type for 'model.trainable': expected list[str], got 3 (int)",
        ),
        (
            "run:\n  precision: fp8\n",
            "wrong type for 'run.precision': expected one of 'fp32', 'bf16', 'fp16', got 'fp8' (str)",
        ),
    ],
)
def test_wrong_type_names_expected_type(tmp_path, presets, body, message):
    header = "" if body.startswith("model:") else "model:\n  model_type: test\n"
    run_yaml = write(tmp_path / "run.yaml", header + body)
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, require_paths=False)
    assert str(error.value) == f"{run_yaml}: {message}"


def test_unset_path_names_key_and_what_to_put_there(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml)
    assert str(error.value) == (
        "chatbridge/config.py (default): 'model.llm.path' is unset (placeholder '/path/to/vicuna-13b'): set it to "
        "a local Hugging Face causal-LM folder (config.json, tokenizer files, weights), e.g. Vicuna-13B v0, "
        "in the YAML or with --options model.llm.path=<path>"
    )


def test_unset_path_is_attributed_to_the_file_that_set_it(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\n  llm:\n    path: /path/to/my-llm\n")
    with pytest.raises(ConfigError, match=rf"^{run_yaml}: 'model.llm.path' is unset \(placeholder '/path/to/my-llm'\)"):
        load_config(run_yaml)


def test_unknown_model_type_lists_presets(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: huge\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml)
    assert str(error.value) == "no model preset for arch 'chatbridge' and model_type 'huge'; known: ['chatbridge_test']"


def test_resolved_config_round_trips(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\n  llm:\n    path: some/llm\n")
    config = load_config(run_yaml, ["run.seed=3"])
    saved = tmp_path / "out" / "config.yaml"
    save_config(config, saved)
    assert load_config(saved) == config


def test_shipped_configs_exist():
    names = {path.parent.name for path in SHIPPED}
    assert names == {"train_configs", "instructiontuning_configs", "eval_configs"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_shipped_config_validates_and_names_resolve(path):
    config = load_config(path, require_paths=False)
    references = {key for key, _, _ in registry_references(config)}
    assert {"model.arch", "model.connector.name", "model.llm.name"} <= references
    assert {f"model.encoders.{key}.name" for key in config.model.encoders} <= references
    for _key, registry, name in registry_references(config):
        registry.get(name)  # raises KeyError listing the known names


def test_train_cli_reports_a_misspelt_key_in_one_line(tmp_path):
    run_yaml = write(tmp_path / "bad.yaml", "model:\n  model_type: tiny\n  connector:\n    num_query_tokn: 8\n")
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), "--cfg-path", str(run_yaml)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"error: {run_yaml}: unknown key 'num_query_tokn' in section 'model.connector' "
        "(did you mean 'num_query_tokens'?)"
    ]


def test_lora_without_a_trainable_adapter_pattern_is_refused(tmp_path, presets):
    run_yaml = write(tmp_path / "run.yaml", "model:\n  model_type: test\n  llm:\n    lora:\n      rank: 4\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, require_paths=False)
    assert str(error.value) == (
        f"{run_yaml}: model.llm.lora.rank > 0 but no model.trainable pattern selects the adapters: add 'llm.*lora_*'"
    )


# ----------------------------------------------------------------------------------------------- pluggable parts

TINY_RUN = "model:\n  model_type: tiny\n"


def test_encoder_sections_validate_against_the_encoders_own_schema(tmp_path):
    run_yaml = write(tmp_path / "run.yaml", TINY_RUN + "  encoders:\n    vision:\n      wdth: 64\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, require_paths=False)
    assert (
        str(error.value) == f"{run_yaml}: unknown key 'wdth' in section 'model.encoders.vision' (did you mean 'width'?)"
    )


def test_unknown_encoder_name_lists_the_registered_ones(tmp_path):
    run_yaml = write(tmp_path / "run.yaml", TINY_RUN + "  encoders:\n    vision:\n      name: eva_vit_h\n")
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, require_paths=False)
    from chatbridge.registry import ENCODERS

    assert (
        str(error.value)
        == f"{run_yaml}: model.encoders.vision.name: unknown encoder 'eva_vit_h'; known: {ENCODERS.names()}"
    )


def test_switching_a_connector_keeps_common_fields_and_takes_the_new_schema(tmp_path):
    from chatbridge.models.connectors.linear import MLPConfig

    run_yaml = write(tmp_path / "run.yaml", TINY_RUN + "  connector:\n    name: mlp\n    hidden_size: 48\n")
    connector = load_config(run_yaml, require_paths=False).model.connector
    assert connector == MLPConfig(name="mlp", hidden_size=48)


def test_processors_take_what_their_encoder_needs_and_layer_per_dataset(tmp_path):
    body = TINY_RUN + (
        "processor:\n  num_frames: 6\ndatasets:\n  clips:\n    modalities: [video, audio]\n"
        "    processor:\n      num_audio_segments: 3\n"
    )
    config = load_config(write(tmp_path / "run.yaml", body), require_paths=False)
    processor = config.datasets["clips"].processor
    assert (processor.video_processor, processor.image_size, processor.mean[0]) == ("video_frames", 64, 0.48145466)
    assert (processor.audio_processor, processor.num_mel_bins, processor.fbank_std) == ("beats_fbank", 32, 6.55582)
    assert processor.num_frames == 6  # top-level processor section
    assert processor.num_audio_segments == 3  # the dataset's own section over it
    assert processor.target_length == 160  # the tiny preset's top-level section
    assert config.processor.num_audio_segments == 2  # the top level keeps its own value


def test_a_processor_value_that_contradicts_its_encoder_is_refused(tmp_path):
    body = TINY_RUN + "datasets:\n  pics:\n    processor:\n      image_size: 32\n"
    run_yaml = write(tmp_path / "run.yaml", body)
    with pytest.raises(ConfigError) as error:
        load_config(run_yaml, require_paths=False)
    assert str(error.value) == f"{run_yaml}: datasets.pics.processor.image_size = 32 but the image encoder needs 64"


@pytest.mark.parametrize(
    ("connector", "modality", "shape", "tokens"),
    [
        ("shared_qformer", "video", (4, 3, 64, 64), 8),  # the queries, whatever the frames
        ("linear", "image", (3, 64, 64), 65),  # CLS + (64 / 8)^2 patches
        ("linear", "video", (4, 3, 64, 64), 260),  # 4 frames of 65
        ("linear", "audio", (2, 160, 32), 40),  # 2 segments of (160 / 16) * (32 / 16)
    ],
)
def test_soft_tokens_come_from_the_config_alone(tmp_path, connector, modality, shape, tokens):
    run_yaml = write(tmp_path / "run.yaml", TINY_RUN + f"  connector:\n    name: {connector}\n")
    assert load_config(run_yaml, require_paths=False).model.soft_tokens(modality, shape) == tokens


def test_cpu_threads_are_set_by_every_entry_point_and_checked(tmp_path):
    import argparse

    import torch

    from chatbridge.cli import load_config_or_exit

    run_yaml = write(tmp_path / "run.yaml", TINY_RUN)
    before = torch.get_num_threads()
    try:
        args = argparse.Namespace(cfg_path=run_yaml, options=[f"run.cpu_threads={before + 1}"])
        assert load_config_or_exit(args, require_paths=False).run.cpu_threads == before + 1
        assert torch.get_num_threads() == before + 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ConfigError, match=r"run.cpu_threads must be >= 1 or null, got 0"):
        load_config(run_yaml, ["run.cpu_threads=0"], require_paths=False)
