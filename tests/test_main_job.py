"""The main job's restart rules (`scripts/main_job.py`): finished phases are skipped, changed inputs are noticed,
and a folder made from other inputs is never overwritten."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def job():
    spec = importlib.util.spec_from_file_location("main_job", REPO / "scripts" / "main_job.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["main_job"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def fake_stage(job, tmp_path: Path, name: str = "stage 1"):
    """A stage whose script only counts its runs and writes the result file, with the real stage-1 YAML."""
    script = tmp_path / "fake_train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from pathlib import Path
            options = sys.argv[sys.argv.index("--options") + 1 :]
            folder = Path(next(o for o in options if o.startswith("run.output_dir=")).split("=", 1)[1])
            (folder / "final").mkdir(parents=True, exist_ok=True)
            (folder / "final" / "model.safetensors").write_text("weights")
            runs = folder.parent / "runs.txt"
            runs.write_text(runs.read_text() + "x" if runs.exists() else "x")
            """
        )
    )
    return job.Stage(name, str(script), job.STAGE1_YAML, "stage_one", "final/model.safetensors", "run.output_dir")


def options(job, stage, output: Path, seed: int = 0) -> list[str]:
    return [f"{stage.output_key}={output / stage.folder}", f"run.seed={seed}", "model.llm.path=null"]


def test_finished_stage_is_skipped_and_changed_inputs_refused(job, tmp_path):
    output = tmp_path / "out"
    stage = fake_stage(job, tmp_path)
    state = job.JobState(output / job.STATE_FILE)

    job.run_stage(stage, output, options(job, stage, output), state)
    job.run_stage(stage, output, options(job, stage, output), job.JobState(output / job.STATE_FILE))
    assert (output / "runs.txt").read_text() == "x"  # the second call found the result and skipped

    with pytest.raises(job.JobError, match=r"stage_one holds a stage 1 run made from other inputs"):
        job.run_stage(stage, output, options(job, stage, output, seed=1), job.JobState(output / job.STATE_FILE))
    assert (output / "runs.txt").read_text() == "x"


def test_interrupted_stage_runs_again(job, tmp_path):
    output = tmp_path / "out"
    stage = fake_stage(job, tmp_path)
    job.run_stage(stage, output, options(job, stage, output), job.JobState(output / job.STATE_FILE))
    (output / stage.folder / stage.result).unlink()  # as if killed before the final checkpoint
    job.run_stage(stage, output, options(job, stage, output), job.JobState(output / job.STATE_FILE))
    assert (output / "runs.txt").read_text() == "xx"


def test_inputs_follow_config_and_weights(job, tmp_path):
    stage = job.STAGES[1]  # stage 2 reads the stage-1 checkpoint
    checkpoint = tmp_path / "stage1"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"one")
    base = [f"model.checkpoint={checkpoint}", "model.llm.path=null"]
    first = job.stage_inputs(stage, base)
    assert job.stage_inputs(stage, base) == first
    assert job.stage_inputs(stage, [*base, "run.init_lr=0.5"]) != first
    (checkpoint / "model.safetensors").write_bytes(b"two")
    assert job.stage_inputs(stage, base) != first


def test_failed_stage_names_itself(job, tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise SystemExit(7)\n")
    stage = job.Stage("stage 1", str(script), job.STAGE1_YAML, "stage_one", "final/model.safetensors", "run.output_dir")
    output = tmp_path / "out"
    with pytest.raises(job.JobError, match=r"stage 1 failed \(exit 7\)"):
        job.run_stage(stage, output, options(job, stage, output), job.JobState(output / job.STATE_FILE))


def test_targets_table_reads_each_split_and_judges_the_test_split(job, tmp_path):
    scores = {"accuracy": 0.96, "exact_match": 0.9, "mean_over_types": 0.84}
    for target in job.TARGETS:
        for name in target.benchmarks:
            for suffix, scale in (("", 1.0), (job.UNSEEN_COMBOS, 0.5)):
                folder = tmp_path / f"{name}{suffix}"
                folder.mkdir()
                metrics = {target.metric: scores[target.metric] * scale}
                (folder / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    rows = job.targets_table(tmp_path).splitlines()
    test, unseen = "image 96.0, video 96.0, audio 96.0 (met)", "image 48.0, video 48.0, audio 48.0"
    assert rows[2] == f"| per-modality QA, accuracy | >= 95 | {test} | {unseen} |"
    assert rows[3].startswith("| captions, exact match | >= 90 | image 90.0, video 90.0, audio 90.0 (met) |")
    assert rows[4].endswith("| image 84.0, video 84.0 (missed) | image 42.0, video 42.0 |")

    (tmp_path / "audio_qa" / "metrics.json").write_text(json.dumps({"metrics": {}}))
    with pytest.raises(job.JobError, match=r"audio_qa/metrics.json: no metric 'accuracy'"):
        job.targets_table(tmp_path)
