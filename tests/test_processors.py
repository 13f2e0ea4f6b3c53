"""Media processors: shapes, reference numerics, frame/segment choice, and one MediaError reason per bad input.

All media are generated into `tmp_path` by `tests/media.py`; video files need PyAV (`av`, a dev dependency).
"""

from __future__ import annotations

import dataclasses
import pickle
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from chatbridge.config import ProcessorConfig
from chatbridge.data.processors.audio import AudioProcessor, build_beats_fbank
from chatbridge.data.processors.errors import MediaError
from chatbridge.data.processors.image import ImageProcessor, build_clip_image, decode_image
from chatbridge.data.processors.video import VideoProcessor, segment_groups, select_frame_indices
from chatbridge.registry import PROCESSORS
from tests.media import (
    checkerboard,
    frame_level,
    write_frame_folder,
    write_image,
    write_random_bytes,
    write_video,
    write_wav,
)

SIZE = 16
CONFIG = ProcessorConfig(
    image_size=SIZE,
    mean=[0.48145466, 0.4578275, 0.40821073],  # CLIP's statistics, what EVA-ViT-g declares
    std=[0.26862954, 0.26130258, 0.27577711],
    sample_rate=16000,  # BEATs' rate, bins and AudioSet statistics
    num_mel_bins=64,
    fbank_mean=15.41663,
    fbank_std=6.55582,
)
"""A resolved config, set by hand: the unit tests build processors without a model section to resolve against."""
TONE_HZ = 1000.0
# Centre of mel bin i (Kaldi: 64 bins over 20 Hz..8 kHz) is at mel(20) + (i + 1) * step; 1 kHz falls between the
# centres of bins 21 and 22. A 22.05 kHz tone read as if it were 16 kHz would peak near 725 Hz, in bin 16.
TONE_MEL_BINS = (21, 22)


def image_processor(antialias: bool = False, augment: bool = False) -> ImageProcessor:
    return ImageProcessor(SIZE, CONFIG.mean, CONFIG.std, antialias, augment)


def audio_processor(**changes: object) -> AudioProcessor:
    """The registered `beats_fbank` processor of `CONFIG` (1 segment of 1024 frames unless changed)."""
    return build_beats_fbank(dataclasses.replace(CONFIG, **changes))


def unnormalise(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, S, S) normalised -> [0, 1] pixels."""
    mean, std = torch.tensor(CONFIG.mean).view(3, 1, 1), torch.tensor(CONFIG.std).view(3, 1, 1)
    return pixels * std + mean


def decoded_frame_indices(frames: torch.Tensor, num_frames_total: int) -> list[int]:
    """Which generated grey frames a (n, 3, S, S) output holds, from each frame's mean grey level."""
    levels = (unnormalise(frames).mean(dim=(1, 2, 3)) * 255).tolist()
    reference = [frame_level(i, num_frames_total) for i in range(num_frames_total)]
    return [int(np.argmin([abs(level - ref) for ref in reference])) for level in levels]


def tone_peak_bin(fbank: torch.Tensor, num_frames: int) -> int:
    """Mel bin with the most energy over the first `num_frames` (unpadded) frames of a (T, F) fbank."""
    return int(fbank[:num_frames].mean(dim=0).argmax())


# --- images ---------------------------------------------------------------------------------------------------


def test_image_solid_colour_normalises_exactly(tmp_path: Path) -> None:
    color = (200, 100, 50)
    pixels = image_processor()(write_image(tmp_path / "solid.png", (40, 30), color))
    assert pixels.shape == (3, SIZE, SIZE) and pixels.dtype == torch.float32
    for channel in range(3):
        expected = (color[channel] / 255 - CONFIG.mean[channel]) / CONFIG.std[channel]
        torch.testing.assert_close(pixels[channel], torch.full((SIZE, SIZE), expected), atol=1e-6, rtol=0)


def test_image_path_stream_and_pil_inputs_agree_and_grey_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "board.png"
    checkerboard(24).convert("L").save(path)  # a one-channel file
    from_path = image_processor()(path)
    assert from_path.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(from_path, image_processor()(checkerboard(24)))
    torch.testing.assert_close(from_path, image_processor()(BytesIO(path.read_bytes())))


def test_resize_matches_torchvision_tensor_resize_without_antialias() -> None:
    functional = pytest.importorskip("torchvision.transforms.functional")
    image = checkerboard(37).rotate(30)
    pixels = functional.to_tensor(image)
    expected = functional.normalize(functional.resize(pixels, [SIZE, SIZE], antialias=False), CONFIG.mean, CONFIG.std)
    torch.testing.assert_close(image_processor()(image), expected)


def test_antialias_flag_changes_a_high_frequency_image() -> None:
    board = checkerboard(3 * SIZE)  # bilinear at scale 3 samples pixel centres: pure aliasing without antialias
    aliased = unnormalise(image_processor(antialias=False)(board))
    smoothed = unnormalise(image_processor(antialias=True)(board))
    assert aliased.std() > 0.4  # still a full-contrast checkerboard
    assert smoothed.std() < 0.05  # averaged to mid grey
    torch.testing.assert_close(smoothed.mean(), torch.tensor(0.5), atol=1e-3, rtol=0)


def test_augmentation_is_seeded_and_needs_a_generator() -> None:
    processor = image_processor(augment=True)
    image = checkerboard(40).rotate(17)
    first = processor(image, train=True, generator=torch.Generator().manual_seed(0))
    assert first.shape == (3, SIZE, SIZE)
    torch.testing.assert_close(first, processor(image, train=True, generator=torch.Generator().manual_seed(0)))
    others = [processor(image, train=True, generator=torch.Generator().manual_seed(seed)) for seed in range(1, 6)]
    assert any(not torch.equal(first, other) for other in others)
    with pytest.raises(ValueError, match="Generator"):
        processor(image, train=True)


def test_augmentation_happens_only_in_training() -> None:
    image = checkerboard(40).rotate(17)
    plain = image_processor()(image)
    torch.testing.assert_close(image_processor(augment=True)(image), plain)  # evaluation: no draw, no generator
    evaluation = image_processor(augment=True)(image, train=False, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(evaluation, plain)


def test_augmentation_draw_is_shared_by_the_frames_of_a_clip() -> None:
    frame = decode_image(checkerboard(40).rotate(17))
    for seed in range(5):
        generator = torch.Generator().manual_seed(seed)
        first, second = image_processor(augment=True).transform([frame, frame], True, generator)
        torch.testing.assert_close(first, second)


# --- frame indices --------------------------------------------------------------------------------------------


def test_segment_groups_follow_valor_split() -> None:
    assert segment_groups(10, 4) == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert segment_groups(2, 4) == [[0], [1], [1], [1]]  # padded with the last frame


def test_frame_indices_hand_computed_for_10_frames_4_segments() -> None:
    assert select_frame_indices(10, 4, "segment_middle") == [1, 4, 6, 8]
    assert select_frame_indices(10, 4, "uniform") == [0, 2, 5, 7]  # int(arange(0, 10, 2.5))


def test_random_frame_indices_are_seeded_and_stay_in_their_group() -> None:
    groups = segment_groups(10, 4)
    draws = [select_frame_indices(10, 4, "segment_random", torch.Generator().manual_seed(seed)) for seed in range(20)]
    for draw in draws:
        assert all(index in group for index, group in zip(draw, groups, strict=True))
    assert draws[0] == select_frame_indices(10, 4, "segment_random", torch.Generator().manual_seed(0))
    assert len({tuple(draw) for draw in draws}) > 1
    with pytest.raises(ValueError, match="Generator"):
        select_frame_indices(10, 4, "segment_random")


@pytest.mark.parametrize("mode", ["segment_middle", "uniform"])
def test_short_videos_repeat_frames(mode: str) -> None:
    assert select_frame_indices(1, 4, mode) == [0, 0, 0, 0]
    assert sorted(set(select_frame_indices(2, 4, mode))) == [0, 1]


def test_unknown_frame_sampling_is_rejected() -> None:
    with pytest.raises(ValueError, match="segment_middle"):
        select_frame_indices(10, 4, "middle")  # type: ignore[arg-type]


# --- videos ---------------------------------------------------------------------------------------------------


@pytest.fixture
def video_file(tmp_path: Path) -> Path:
    pytest.importorskip("av")
    return write_video(tmp_path / "clip.mp4", num_frames=10, size=32)


def test_video_file_gives_the_middle_frames(video_file: Path) -> None:
    frames = build_video_frames_processor()(video_file)
    assert frames.shape == (4, 3, SIZE, SIZE) and frames.dtype == torch.float32
    assert decoded_frame_indices(frames, 10) == [1, 4, 6, 8]
    torch.testing.assert_close(build_video_frames_processor()(BytesIO(video_file.read_bytes())), frames)


def test_frame_folder_gives_the_middle_frames(tmp_path: Path) -> None:
    folder = write_frame_folder(tmp_path / "frames", 10)
    (folder / "notes.txt").write_text("not a frame")  # ignored: only image extensions count
    frames = build_video_frames_processor()(folder)
    assert frames.shape == (4, 3, SIZE, SIZE)
    assert decoded_frame_indices(frames, 10) == [1, 4, 6, 8]
    # the same frames given as a sequence of sources (as the shard reader hands them over)
    torch.testing.assert_close(build_video_frames_processor()(sorted(folder.glob("*.jpg"))), frames)


def test_video_uniform_and_seeded_training_sampling(video_file: Path) -> None:
    uniform = VideoProcessor(4, "uniform", image_processor())(video_file)
    assert decoded_frame_indices(uniform, 10) == [0, 2, 5, 7]
    processor = VideoProcessor(4, None, image_processor())
    first = processor(video_file, train=True, generator=torch.Generator().manual_seed(3))
    again = processor(video_file, train=True, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again)
    expected = select_frame_indices(10, 4, "segment_random", torch.Generator().manual_seed(3))
    assert decoded_frame_indices(first, 10) == expected


def test_one_frame_video_gives_n_copies(tmp_path: Path) -> None:
    pytest.importorskip("av")
    frames = build_video_frames_processor()(write_video(tmp_path / "still.mp4", num_frames=1, size=32))
    assert frames.shape == (4, 3, SIZE, SIZE)
    assert all(torch.equal(frames[0], frame) for frame in frames)


def build_video_frames_processor() -> VideoProcessor:
    return PROCESSORS.get("video_frames")(CONFIG)


# --- audio ----------------------------------------------------------------------------------------------------


def test_wav_at_22khz_is_resampled_to_16khz_fbank(tmp_path: Path) -> None:
    fbank = audio_processor()(write_wav(tmp_path / "tone.wav", 1.0, 22050, TONE_HZ))
    assert fbank.shape == (1, 1024, 64) and fbank.dtype == torch.float32
    # 1 s at 16 kHz = 16000 samples -> 1 + (16000 - 400) // 160 = 98 Kaldi frames, then zero padding.
    assert fbank[0, :98].abs().sum(dim=1).min() > 0
    assert torch.count_nonzero(fbank[0, 98:]) == 0
    assert tone_peak_bin(fbank[0], 98) in TONE_MEL_BINS


@pytest.mark.parametrize("suffix", [".flac", ".ogg", ".mp3"])
def test_other_audio_formats_decode(tmp_path: Path, suffix: str) -> None:
    if suffix == ".mp3" and "MP3" not in soundfile.available_formats():
        pytest.skip("this libsndfile has no MP3 support (needs >= 1.1)")
    fbank = audio_processor()(write_wav(tmp_path / f"tone{suffix}", 1.0, 16000, TONE_HZ))
    assert fbank.shape == (1, 1024, 64)
    assert tone_peak_bin(fbank[0], 90) in TONE_MEL_BINS


def test_audio_track_of_a_video(tmp_path: Path) -> None:
    pytest.importorskip("av")
    video = write_video(tmp_path / "with_audio.mp4", num_frames=10, size=32, tone_hz=TONE_HZ, sample_rate=22050)
    fbank = audio_processor()(video)
    assert fbank.shape == (1, 1024, 64)
    assert tone_peak_bin(fbank[0], 90) in TONE_MEL_BINS


def test_audio_segments_training_is_seeded(tmp_path: Path) -> None:
    processor = audio_processor(num_audio_segments=2, target_length=32)
    path = write_wav(tmp_path / "tone.wav", 1.0, 16000, TONE_HZ)  # 98 frames -> 4 slices of 32, groups of 2
    first = processor(path, train=True, generator=torch.Generator().manual_seed(0))
    assert first.shape == (2, 32, 64)
    torch.testing.assert_close(first, processor(path, train=True, generator=torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match="Generator"):
        processor(path, train=True)


# --- bad input ------------------------------------------------------------------------------------------------


def all_processors() -> dict[str, object]:
    return {".png": build_clip_image(CONFIG), ".mp4": build_video_frames_processor(), ".wav": audio_processor()}


def assert_reason(reason: str, processor: object, path: Path, culprit: Path | None = None) -> None:
    """`processor(path)` raises MediaError(reason) naming `culprit` (default: `path` itself)."""
    with pytest.raises(MediaError) as caught:
        processor(path)  # type: ignore[operator]
    assert caught.value.reason == reason
    assert caught.value.path == str(culprit or path)


@pytest.mark.parametrize("suffix", [".png", ".mp4", ".wav"])
def test_missing_zero_byte_and_random_files(tmp_path: Path, suffix: str) -> None:
    processor = all_processors()[suffix]
    assert_reason("missing", processor, tmp_path / f"absent{suffix}")
    (tmp_path / f"zero{suffix}").touch()
    assert_reason("empty", processor, tmp_path / f"zero{suffix}")
    assert_reason("undecodable", processor, write_random_bytes(tmp_path / f"random{suffix}"))


def test_random_bytes_named_jpg_are_undecodable(tmp_path: Path) -> None:
    assert_reason("undecodable", build_clip_image(CONFIG), write_random_bytes(tmp_path / "random.jpg"))


def truncate(path: Path, keep: int) -> Path:
    """Keeps the first `keep` bytes of `path`, like an interrupted download."""
    path.write_bytes(path.read_bytes()[:keep])
    return path


def test_truncated_files_are_undecodable(tmp_path: Path) -> None:
    pytest.importorskip("av")
    image = tmp_path / "cut.png"
    checkerboard(64).rotate(10).save(image)
    assert_reason("undecodable", build_clip_image(CONFIG), truncate(image, image.stat().st_size // 2))
    wav = write_wav(tmp_path / "cut.wav", 1.0, 16000, 440.0)
    assert_reason("undecodable", audio_processor(), truncate(wav, 20))  # inside the header
    video = write_video(tmp_path / "cut.mp4", num_frames=10, size=32)
    assert_reason("undecodable", build_video_frames_processor(), truncate(video, video.stat().st_size // 2))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_audio(tmp_path: Path, value: float) -> None:
    samples = np.zeros(16000, np.float32)
    samples[100] = value
    soundfile.write(tmp_path / "bad.wav", samples, 16000, subtype="FLOAT")
    assert_reason("non_finite", audio_processor(), tmp_path / "bad.wav")


def test_zero_sample_and_too_short_audio(tmp_path: Path) -> None:
    soundfile.write(tmp_path / "silent.wav", np.zeros(0, np.float32), 16000)
    assert_reason("empty", audio_processor(), tmp_path / "silent.wav")
    soundfile.write(tmp_path / "blip.wav", np.zeros(399, np.float32), 16000)  # one Kaldi window needs 400
    assert_reason("too_short", audio_processor(), tmp_path / "blip.wav")


def test_video_without_audio_track_has_empty_audio(video_file: Path) -> None:
    assert_reason("empty", audio_processor(), video_file)


def test_bad_frame_folders(tmp_path: Path) -> None:
    (tmp_path / "no_frames").mkdir()
    assert_reason("empty", build_video_frames_processor(), tmp_path / "no_frames")
    folder = write_frame_folder(tmp_path / "frames", 10)
    bad_frame = write_random_bytes(folder / "frame_0004.jpg")  # a frame the middle rule picks
    assert_reason("undecodable", build_video_frames_processor(), folder, culprit=bad_frame)


def test_unresolved_encoder_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="processor.image_size is unset"):
        build_clip_image(ProcessorConfig())
    with pytest.raises(ValueError, match="processor.mean is unset"):
        PROCESSORS.get("video_frames")(ProcessorConfig(image_size=SIZE))
    with pytest.raises(ValueError, match="processor.sample_rate is unset"):
        build_beats_fbank(ProcessorConfig())


def test_media_error_reason_vocabulary_and_pickling() -> None:
    error = pickle.loads(pickle.dumps(MediaError("too_short", "a.wav", "12 samples")))
    assert (error.reason, error.path, error.detail) == ("too_short", "a.wav", "12 samples")
    assert "too_short" in str(error) and "a.wav" in str(error)
    with pytest.raises(ValueError, match="non_finite"):
        MediaError("broken", "a.wav")  # type: ignore[arg-type]
