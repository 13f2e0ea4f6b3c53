"""The main job on the tiny default: synthetic world, stand-in weights, stage 1, stage 2, evaluation, report.

    python scripts/main_job.py [--seed 0] [--output outputs] [--options KEY=VALUE ...]

Every phase is the repository's own code: the world and the stand-ins through `chatbridge.synthetic` (what
`train.py` would make on first use), both stages with `train.py` and the tiny YAMLs, the evaluation with
`evaluate.py`, each in its own process with its own progress bar. The report (`<output>/report.md`) holds the
results table, the loss curves (`<output>/loss_curves.png`), each phase's wall time, and the command that opens the
chat on the trained checkpoint.

Restarting is safe: a phase whose result exists and whose inputs (its resolved config, and the weights it reads)
are those it was made from is skipped; an interrupted stage resumes from its last checkpoint; an interrupted
evaluation keeps its finished predictions. A folder made from other inputs is never overwritten: the job stops and
names it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE1_YAML = "train_configs/chatbridge_tiny_pretrain.yaml"
STAGE2_YAML = "instructiontuning_configs/chatbridge_tiny_instructtuning.yaml"
EVAL_YAML = "eval_configs/chatbridge_tiny_eval.yaml"
STATE_FILE = "main_job.json"


@dataclass(frozen=True)
class Stage:
    """One `train.py` or `evaluate.py` run of the job."""

    name: str
    script: str
    cfg_path: str
    folder: str
    """Where its results go, under the job's output folder."""
    result: str
    """The file that exists once the run finished, relative to `folder`."""
    output_key: str


STAGES = (
    Stage("stage 1", "train.py", STAGE1_YAML, "tiny_pretrain", "final/model.safetensors", "run.output_dir"),
    Stage("stage 2", "train.py", STAGE2_YAML, "tiny_instructtuning", "final/model.safetensors", "run.output_dir"),
    Stage("evaluation", "evaluate.py", EVAL_YAML, "tiny_eval", "results.md", "evaluation.output_dir"),
)


class JobError(RuntimeError):
    """A reason to stop the job, in one line."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the bridge's initialisation and data order")
    parser.add_argument("--output", default="outputs", help="folder for both stages, the evaluation and the report")
    parser.add_argument("--options", nargs="+", default=[], metavar="KEY=VALUE", help="overrides for every stage")
    parser.add_argument("--prepare-step", help=argparse.SUPPRESS)  # one stand-in, in a child process of the job
    args = parser.parse_args(argv)
    from chatbridge.cli import setup_logging

    setup_logging()  # the stand-ins' log lines: LM loss, the towers' probe accuracy on held-out media
    if args.prepare_step:
        _timed_step(args.prepare_step, dict(_preparation_steps(args.options))[args.prepare_step])
        return 0
    try:
        return run_job(Path(args.output), args.seed, args.options)
    except JobError as error:
        print(f"main job stopped: {error}", file=sys.stderr)
        return 1


def run_job(output: Path, seed: int, options: Sequence[str]) -> int:
    started = time.perf_counter()
    state = JobState(output / STATE_FILE)
    timings = prepare_stand_ins(stage_options(STAGES[0], output, seed, options))
    for stage in STAGES:
        timings[stage.name] = run_stage(stage, output, stage_options(stage, output, seed, options), state)
    timings["total"] = time.perf_counter() - started
    report = write_report(output, seed, timings)
    print(report)
    print(f"main job finished in {timings['total']:.0f} s; report: {output / 'report.md'}")
    return 0


def stage_options(stage: Stage, output: Path, seed: int, options: Sequence[str]) -> list[str]:
    """The overrides of one stage: its output folder, the previous stage's checkpoint, the seed, then the user's."""
    chained = {
        "stage 1": [],
        "stage 2": [f"model.checkpoint={output / STAGES[0].folder / 'final'}"],
        "evaluation": [f"model.checkpoint={output / STAGES[1].folder / 'final'}"],
    }[stage.name]
    seeds = [f"run.seed={seed}", f"model.init_seed={seed}"] if stage.script == "train.py" else []
    return [f"{stage.output_key}={output / stage.folder}", *chained, *seeds, *options]


def prepare_stand_ins(options: Sequence[str]) -> dict[str, float]:
    """The world, then the stand-in weights side by side, timed (an existing identical copy takes no time).

    Every stand-in learns from the world, so it comes first. The stand-ins are small models that keep one core busy
    each; made in parallel processes of one thread each, they take as long as the slowest instead of the sum."""
    (world, make_world), *stand_ins = _preparation_steps(options)
    timings = {world: _timed_step(world, make_world)}
    names = [name for name, _ in stand_ins]
    print(f"== {', '.join(names)} (side by side)", flush=True)
    start = time.perf_counter()
    extra = ["--options", *options] if options else []
    children = {
        name: subprocess.Popen([sys.executable, __file__, "--prepare-step", name, *extra], cwd=REPO) for name in names
    }
    failed = [name for name, child in children.items() if child.wait() != 0]
    if failed:
        raise JobError(f"making {', '.join(failed)} failed (its error is above); rerun the job to continue")
    timings["stand-ins (side by side)"] = time.perf_counter() - start
    return timings


def _preparation_steps(options: Sequence[str]) -> list:
    from chatbridge.config_loading import load_config
    from chatbridge.synthetic import preparation_steps

    return preparation_steps(load_config(REPO / STAGE1_YAML, options, require_paths=False))


def _timed_step(name: str, make: Callable[[], None]) -> float:
    """Run one preparation step on one thread; its wall time in seconds."""
    import torch

    torch.set_num_threads(1)
    print(f"== {name}", flush=True)
    start = time.perf_counter()
    make()
    return time.perf_counter() - start


class JobState:
    """Which inputs each stage's folder was made from, kept in `<output>/main_job.json`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = json.loads(path.read_text()) if path.exists() else {}

    def fingerprint(self, stage: Stage) -> str | None:
        return self.records.get(stage.folder, {}).get("inputs")

    def record(self, stage: Stage, inputs: str, seconds: float | None) -> None:
        self.records[stage.folder] = {"inputs": inputs, "seconds": seconds}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.records, indent=1) + "\n")
        temporary.replace(self.path)

    def seconds(self, stage: Stage) -> float | None:
        return self.records.get(stage.folder, {}).get("seconds")


def run_stage(stage: Stage, output: Path, options: list[str], state: JobState) -> float:
    """Run one stage unless its result exists and was made from the same inputs; its wall time in seconds."""
    folder = output / stage.folder
    inputs = stage_inputs(stage, options)
    recorded = state.fingerprint(stage)
    if recorded == inputs and (folder / stage.result).exists():
        print(f"== {stage.name}: done before with the same inputs ({folder}), skipped", flush=True)
        return state.seconds(stage) or 0.0
    if folder.exists() and any(folder.iterdir()) and recorded != inputs:
        raise JobError(
            f"{folder} holds a {stage.name} run made from other inputs (another config, seed or stand-in weights): "
            f"remove it, or pass another --output"
        )
    state.record(stage, inputs, None)
    print(f"== {stage.name}: {stage.script} --cfg-path {stage.cfg_path}", flush=True)
    start = time.perf_counter()
    resume = ["run.resume=auto"] if stage.script == "train.py" else []
    command = [sys.executable, str(REPO / stage.script), "--cfg-path", str(REPO / stage.cfg_path)]
    finished = subprocess.run([*command, "--options", *options, *resume], cwd=REPO, check=False)
    if finished.returncode != 0:
        raise JobError(f"{stage.name} failed (exit {finished.returncode}); rerun the job to continue where it stopped")
    seconds = time.perf_counter() - start
    state.record(stage, inputs, seconds)
    return seconds


def stage_inputs(stage: Stage, options: Sequence[str]) -> str:
    """sha256 of the stage's resolved config and of every weights file it reads (stand-ins, previous stage)."""
    from chatbridge.config_loading import config_to_yaml, load_config

    config = load_config(REPO / stage.cfg_path, options, require_paths=False)
    digest = hashlib.sha256(config_to_yaml(config).encode())
    for path in weight_files(config):
        digest.update(str(path).encode())
        digest.update(file_sha256(path).encode() if path.is_file() else b"missing")
    return digest.hexdigest()


def weight_files(config) -> list[Path]:  # noqa: ANN001 - a TrainConfig, imported lazily
    """The files whose change makes a stage's result stale: the LLM's weights, each encoder checkpoint and the
    checkpoint the stage starts from."""
    files = [Path(config.model.llm.path) / "model.safetensors"] if config.model.llm.path else []
    files += [Path(encoder.checkpoint) for encoder in config.model.encoders.values() if encoder.checkpoint]
    if config.model.checkpoint:
        files.append(Path(config.model.checkpoint) / "model.safetensors")
    return files


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Target:
    """One of the job's accuracy targets: a metric of some benchmarks and the value it should reach (percent)."""

    what: str
    metric: str
    benchmarks: tuple[str, ...]
    goal: float


TARGETS = (
    Target("per-modality QA, accuracy", "accuracy", ("image_qa", "video_qa", "audio_qa"), 95.0),
    Target("captions, exact match", "exact_match", ("image_captions", "video_captions", "audio_captions"), 90.0),
    Target(
        "joint QA, slot accuracy averaged over types", "mean_over_types", ("image_audio_qa", "video_audio_qa"), 85.0
    ),
)
UNSEEN_COMBOS = "_unseen_combos"
"""Suffix of the benchmarks on the held-out attribute combinations (the eval YAML's second split)."""


def targets_table(evaluation: Path) -> str:
    """Each target against the test split's scores, and the same metric on unseen attribute combinations."""
    lines = ["| target | goal | test split | unseen combinations |", "|---|---|---|---|"]
    for target in TARGETS:
        test, unseen = (
            [_metric(evaluation, f"{name}{suffix}", target.metric) for name in target.benchmarks]
            for suffix in ("", UNSEEN_COMBOS)
        )
        verdict = "met" if min(test) >= target.goal else "missed"
        test_cell, unseen_cell = f"{_scores(target, test)} ({verdict})", _scores(target, unseen)
        lines.append(f"| {target.what} | >= {target.goal:.0f} | {test_cell} | {unseen_cell} |")
    return "\n".join(lines)


def _scores(target: Target, scores: list[float]) -> str:
    """Each benchmark's score after its first word: "image 97.5, video 96.0, audio 95.2"."""
    return ", ".join(f"{name.split('_')[0]} {score:.1f}" for name, score in zip(target.benchmarks, scores, strict=True))


def _metric(evaluation: Path, benchmark: str, metric: str) -> float:
    path = evaluation / benchmark / "metrics.json"
    try:
        return 100 * json.loads(path.read_text())["metrics"][metric]
    except (OSError, KeyError, ValueError) as error:
        raise JobError(f"{path}: no metric {metric!r} ({error})") from None


def write_report(output: Path, seed: int, timings: dict[str, float]) -> str:
    """`report.md` (results, wall times, the plot, the chat command) and `loss_curves.png`; returns the markdown."""
    from chatbridge.evaluation.plots import plot_losses

    plot = plot_losses(
        {
            f"{stage.name} ({Path(stage.cfg_path).stem})": output / stage.folder / "metrics.jsonl"
            for stage in STAGES[:2]
        },
        output / "loss_curves.png",
        title=f"tiny default, seed {seed}",
    )
    results = (output / STAGES[2].folder / "results.md").read_text()
    times = "\n".join(f"| {name} | {seconds:.0f} |" for name, seconds in timings.items())
    checkpoint = output / STAGES[1].folder / "final"
    report = (
        f"# Main job: tiny default, seed {seed}\n\n{targets_table(output / STAGES[2].folder)}\n\n"
        f"## All results\n\n{results}\n\n![loss curves]({plot.name})\n\n"
        f"| phase | wall time (s) |\n|---|---|\n{times}\n\n"
        f"Chat with the trained model:\n\n    .venv/bin/python chat.py --cfg-path {EVAL_YAML} "
        f"--options model.checkpoint={checkpoint}\n"
    )
    (output / "report.md").write_text(report)
    return report


if __name__ == "__main__":
    sys.exit(main())
