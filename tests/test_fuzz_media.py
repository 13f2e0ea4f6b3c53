"""Hundreds of deterministically corrupted media files behind real annotation files: no crash, exact skip counts.

Every case below writes one file (or folder) in a known broken way, or a good file in an unusual way (wrong
extension, id resolved by suffix, one pixel, one frame, 8 kHz stereo). Each dataset's rows reference `REPEATS`
copies of every case (seeded variations: random bytes, cut points); loading every index with the mixture's
pattern (catch `MediaError` only, record the reason) must give exactly the reasons the cases predict.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

import chatbridge.data.datasets  # noqa: F401  (registers the dataset builders)
from chatbridge.config import DatasetConfig, ProcessorConfig
from chatbridge.config_loading import load_config
from chatbridge.data.datasets.base import DataContext, SkipCounter
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.shard_writer import write_shards
from chatbridge.models.llm import load_tokenizer
from chatbridge.registry import DATASETS
from tests.media import write_video

REPO = Path(__file__).resolve().parents[1]
TINY_PRETRAIN = REPO / "train_configs" / "chatbridge_tiny_pretrain.yaml"
REPEATS = 8
PROCESSOR = ProcessorConfig(
    image_processor="clip_image",
    video_processor="video_frames",
    audio_processor="beats_fbank",
    image_size=16,
    num_frames=4,
    mean=[0.48145466, 0.4578275, 0.40821073],  # CLIP's, as EVA-ViT-g declares
    std=[0.26862954, 0.26130258, 0.27577711],
    sample_rate=16000,  # BEATs' rate, bins and AudioSet statistics
    num_mel_bins=64,
    fbank_mean=15.41663,
    fbank_std=6.55582,
)
"""Explicit (resolved) settings: 16-pixel frames and one 1024 x 64 fbank segment, whatever the model preset says."""
Writer = Callable[[Path, np.random.Generator], None]


@dataclass(frozen=True)
class Case:
    """One way to write a media file. The file is `<kind>_<n><file_suffix>`, the annotation id `<kind>_<n><id_suffix>`
    (a shorter id exercises suffix resolution); `write` None leaves the file missing; `reason` None = it loads."""

    kind: str
    file_suffix: str
    id_suffix: str
    write: Writer | None
    reason: str | None


# ----------------------------------------------------------------------------------------------- writers


def random_pixels(rng: np.random.Generator, size: int = 24) -> Image.Image:
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png(path: Path, rng: np.random.Generator) -> None:
    random_pixels(rng).save(path, format="PNG")


def jpeg(path: Path, rng: np.random.Generator) -> None:
    random_pixels(rng).save(path, format="JPEG", quality=90)


def one_pixel(path: Path, rng: np.random.Generator) -> None:
    random_pixels(rng, 1).save(path, format="PNG")


def truncated(writer: Writer) -> Writer:
    """A good file cut at a random point between 20 % and 90 % of its length."""

    def write(path: Path, rng: np.random.Generator) -> None:
        writer(path, rng)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * rng.uniform(0.2, 0.9))])

    return write


def head(writer: Writer, num_bytes: int) -> Writer:
    """Only the first bytes (the header) of a good file."""

    def write(path: Path, rng: np.random.Generator) -> None:
        writer(path, rng)
        path.write_bytes(path.read_bytes()[:num_bytes])

    return write


def as_other(writer: Writer, suffix: str) -> Writer:
    """A good file of another format (written with its own suffix) under this case's name."""

    def write(path: Path, rng: np.random.Generator) -> None:
        source = path.with_name(path.name + ".source" + suffix)
        writer(source, rng)
        source.rename(path)

    return write


def zero_bytes(path: Path, rng: np.random.Generator) -> None:
    path.touch()


def random_bytes(path: Path, rng: np.random.Generator) -> None:
    path.write_bytes(rng.bytes(int(rng.integers(1, 5000))))


def riff_garbage(path: Path, rng: np.random.Generator) -> None:
    """Random bytes behind a RIFF/WAVE magic. Bare random bytes are not used for audio: FFmpeg (the fallback
    decoder) probes about 1 % of them as some non-audio container, which the processor reports as "empty"."""
    body = rng.bytes(int(rng.integers(1, 5000)))
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body) + 4) + b"WAVE" + body)


def text(path: Path, rng: np.random.Generator) -> None:
    path.write_text("this is not media\n" * int(rng.integers(1, 50)))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(path: Path, rng: np.random.Generator) -> None:
    """A valid PNG header claiming 30000 x 30000 pixels: PIL refuses it before allocating anything."""
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(bytes(16))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def folder(path: Path, rng: np.random.Generator) -> None:
    path.mkdir()


def wav(path: Path, rng: np.random.Generator, seconds: float = 0.5, rate: int = 16000) -> None:
    samples = (0.3 * np.sin(np.arange(int(seconds * rate)) * rng.uniform(0.01, 0.2))).astype(np.float32)
    soundfile.write(path, samples, rate, format="WAV", subtype="PCM_16")


def flac(path: Path, rng: np.random.Generator) -> None:
    samples = (0.3 * np.sin(np.arange(8000) * rng.uniform(0.01, 0.2))).astype(np.float32)
    soundfile.write(path, samples, 16000, format="FLAC")


def stereo_8k(path: Path, rng: np.random.Generator) -> None:
    samples = rng.uniform(-0.5, 0.5, (4000, 2)).astype(np.float32)
    soundfile.write(path, samples, 8000, format="WAV")


def zero_samples(path: Path, rng: np.random.Generator) -> None:
    soundfile.write(path, np.zeros(0, np.float32), 16000, format="WAV")


def poisoned(value: float) -> Writer:
    """A float WAV with one NaN or infinite sample at a random position."""

    def write(path: Path, rng: np.random.Generator) -> None:
        samples = np.zeros(8000, np.float32)
        samples[int(rng.integers(8000))] = value
        soundfile.write(path, samples, 16000, format="WAV", subtype="FLOAT")

    return write


def too_short(path: Path, rng: np.random.Generator) -> None:
    soundfile.write(path, np.zeros(int(rng.integers(1, 399)), np.float32), 16000, format="WAV")


def frames(count: int, bad: set[int] | None = None, bad_writer: Writer = random_bytes, extra: str = "") -> Writer:
    """A frame folder of `count` JPEGs, frames in `bad` (None: all) written by `bad_writer`, plus a stray file."""

    def write(path: Path, rng: np.random.Generator) -> None:
        path.mkdir()
        for index in range(count):
            broken = bad is None or index in bad
            (bad_writer if broken else jpeg)(path / f"img_{index:04d}.jpg", rng)
        if extra:
            (path / extra).write_text("not a frame")

    return write


def mp4(num_frames: int) -> Writer:
    def write(path: Path, rng: np.random.Generator) -> None:
        write_video(path, num_frames=num_frames, size=32)

    return write


# ----------------------------------------------------------------------------------------------- cases

IMAGE_CASES = (
    Case("good_png", ".png", ".png", png, None),
    Case("jpg_by_suffix", ".jpg", "", jpeg, None),
    Case("JPEG_by_suffix", ".JPEG", ".jpg", jpeg, None),
    Case("png_named_jpg", ".jpg", ".jpg", png, None),
    Case("one_pixel", ".png", ".png", one_pixel, None),
    Case("zero_bytes", ".jpg", ".jpg", zero_bytes, "empty"),
    Case("truncated_jpg", ".jpg", ".jpg", truncated(jpeg), "undecodable"),
    Case("truncated_png", ".png", ".png", truncated(png), "undecodable"),
    Case("png_header_only", ".png", ".png", head(png, 16), "undecodable"),
    Case("random_bytes", ".jpg", ".jpg", random_bytes, "undecodable"),
    Case("text", ".png", ".png", text, "undecodable"),
    Case("wav_named_jpg", ".jpg", ".jpg", as_other(wav, ".wav"), "undecodable"),
    Case("decompression_bomb", ".png", ".png", decompression_bomb, "undecodable"),
    Case("folder", ".png", ".png", folder, "missing"),
    Case("missing", ".jpg", ".jpg", None, "missing"),
)
VIDEO_CASES = (
    Case("frames_8", "", "", frames(8, bad=set()), None),
    Case("frames_1", "", "", frames(1, bad=set()), None),
    Case("frames_and_stray_file", "", "", frames(5, bad=set(), extra="notes.txt"), None),
    Case("mp4_by_suffix", ".mp4", "", mp4(6), None),
    Case("mp4_one_frame", ".mp4", ".mp4", mp4(1), None),
    Case("empty_folder", "", "", folder, "empty"),
    Case("no_frame_files", "", "", frames(0, extra="notes.txt"), "empty"),
    Case("zero_byte_frames", "", "", frames(4, bad_writer=zero_bytes), "empty"),
    Case("random_frames", "", "", frames(4), "undecodable"),
    Case("one_bad_frame", "", "", frames(4, bad={2}), "undecodable"),
    Case("zero_byte_mp4", ".mp4", ".mp4", zero_bytes, "empty"),
    Case("random_mp4", ".mp4", ".mp4", random_bytes, "undecodable"),
    Case("truncated_mp4", ".mp4", ".mp4", truncated(mp4(6)), "undecodable"),
    Case("text_mp4", ".mp4", "", text, "undecodable"),
    Case("missing", "", "", None, "missing"),
)
AUDIO_CASES = (
    Case("wav_by_suffix", ".wav", "", wav, None),
    Case("flac_by_suffix", ".flac", "", flac, None),
    Case("flac_named_wav", ".wav", ".wav", as_other(flac, ".flac"), None),
    Case("stereo_8k", ".wav", ".wav", stereo_8k, None),
    Case("truncated_data", ".wav", "", truncated(wav), None),  # libsndfile reads what is there
    Case("zero_bytes", ".wav", ".wav", zero_bytes, "empty"),
    Case("zero_samples", ".wav", ".wav", zero_samples, "empty"),
    Case("header_only", ".wav", ".wav", head(wav, 20), "undecodable"),
    Case("riff_garbage", ".wav", ".wav", riff_garbage, "undecodable"),
    Case("text", ".mp3", ".mp3", text, "undecodable"),
    Case("nan", ".wav", ".wav", poisoned(np.nan), "non_finite"),
    Case("inf", ".wav", "", poisoned(-np.inf), "non_finite"),
    Case("too_short", ".wav", ".wav", too_short, "too_short"),
    # FFmpeg opens a PNG as a one-frame image stream; with no audio stream the processor reports "empty".
    Case("png_named_wav", ".wav", ".wav", as_other(png, ".png"), "empty"),
    Case("missing", ".wav", ".wav", None, "missing"),
)
CASES = {"image": IMAGE_CASES, "video": VIDEO_CASES, "audio": AUDIO_CASES}
ROOT_FIELDS = {"image": "image_root", "video": "video_root", "audio": "audio_root"}


def write_dataset(root: Path, modality: str, seed: int) -> tuple[Path, list[Case]]:
    """Media for `REPEATS` copies of every case, rows in a shuffled order; returns the annotations and row cases."""
    rng = np.random.default_rng(seed)
    media = root / modality
    media.mkdir(parents=True)
    rows, row_cases = [], []
    for repeat in range(REPEATS):
        for case in CASES[modality]:
            name = f"{case.kind}_{repeat}"
            if case.write is not None:
                case.write(media / f"{name}{case.file_suffix}", rng)
            rows.append({"video_id": name + case.id_suffix, "caption": f"a {modality} number {repeat}"})
            row_cases.append(case)
    order = rng.permutation(len(rows))
    annotations = root / f"{modality}.json"
    annotations.write_text(json.dumps([rows[i] for i in order]))
    return annotations, [row_cases[i] for i in order]


@pytest.fixture(scope="module")
def context(tiny_llm_dir):
    """The tiny preset's model config: its Q-Former gives every medium 4 soft tokens, whatever its shape."""
    model = load_config(TINY_PRETRAIN, [f"model.llm.path={tiny_llm_dir}"], require_paths=False).model
    return DataContext(load_tokenizer(tiny_llm_dir), dataclasses.replace(model, max_txt_len=32))


@pytest.fixture(scope="module")
def fuzz_world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    return root, {modality: write_dataset(root, modality, seed) for seed, modality in enumerate(CASES)}


def load_all(source, counter: SkipCounter, expected_shapes: tuple) -> None:
    """The mixture's pattern: every index, catching MediaError only."""
    for index in range(len(source)):
        counter.attempt(source.name)
        try:
            sample = source.load(index, True, torch.Generator().manual_seed(index))
        except MediaError as error:
            counter.record(source.name, error.reason, error.path)
            continue
        assert tuple(sample.media[0].tensor.shape) == expected_shapes
        assert torch.isfinite(sample.media[0].tensor).all()


SHAPES = {"image": (3, 16, 16), "video": (4, 3, 16, 16), "audio": (1, 1024, 64)}


def expected_skips(cases: list[Case]) -> Counter:
    return Counter(case.reason for case in cases if case.reason is not None)


def test_json_sources_skip_exactly_the_corrupted_media(fuzz_world, context):
    root, datasets = fuzz_world
    counter = SkipCounter()
    for modality, (annotation_file, _) in datasets.items():
        cfg = DatasetConfig(
            modalities=[modality],
            annotations=str(annotation_file),
            processor=PROCESSOR,
            **{ROOT_FIELDS[modality]: str(root / modality)},
        )
        load_all(DATASETS.get("caption_json")(modality, cfg, context), counter, SHAPES[modality])
    for modality, (_, cases) in datasets.items():
        assert counter.attempted[modality] == len(cases) == len(CASES[modality]) * REPEATS
        assert counter.skipped[modality] == expected_skips(cases), modality
    assert {modality: dict(counter.skipped[modality]) for modality in CASES} == {
        "image": {"empty": 8, "undecodable": 56, "missing": 16},
        "video": {"empty": 32, "undecodable": 40, "missing": 8},
        "audio": {"empty": 24, "undecodable": 24, "non_finite": 16, "too_short": 8, "missing": 8},
    }


@pytest.mark.parametrize("modality", ["image", "audio"])
def test_shard_sources_skip_the_same_media(fuzz_world, context, tmp_path, modality):
    """Packed without validation, the same files fail at load with the same reasons (folders and absent files
    cannot be packed, so those cases are left out)."""
    root, datasets = fuzz_world
    rows = json.loads(datasets[modality][0].read_text())
    packable = [
        (row, case)
        for row, case in zip(rows, datasets[modality][1], strict=True)
        if case.write is not None and case.write is not folder
    ]
    samples = []
    for row, case in packable:
        path = root / modality / (row["video_id"].removesuffix(case.id_suffix) + case.file_suffix)
        samples.append((row["video_id"], row["caption"], {modality: path}))
    write_shards(samples, tmp_path / "shards", max_per_shard=40)
    cfg = DatasetConfig(
        builder="caption_shards", modalities=[modality], annotations=str(tmp_path / "shards"), processor=PROCESSOR
    )
    counter = SkipCounter()
    load_all(DATASETS.get("caption_shards")(modality, cfg, context), counter, SHAPES[modality])
    assert counter.skipped[modality] == expected_skips([case for _, case in packable])
