"""ChatBind's preprocessing: shapes and statistics as docs/reference/chatbind.md §3 describes them."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch
from PIL import Image

from chatbridge.config import ProcessorConfig
from chatbridge.data.processors.imagebind import clip_bounds, uniform_crops
from chatbridge.models.encoders.imagebind import CLIP_MEAN, CLIP_STD, ImageBindConfig
from chatbridge.registry import PROCESSORS, load_builtin_components


def processors(**settings) -> dict[str, object]:
    """The three processors, resolved against the full-size encoder like a run config."""
    load_builtin_components()
    cfg = ProcessorConfig(**settings)
    for modality in ("image", "video", "audio"):
        cfg.resolve(modality, ImageBindConfig().preprocessing(modality), "processor")
    return {m: PROCESSORS.get(getattr(cfg, f"{m}_processor"))(cfg) for m in ("image", "video", "audio")}


def _normalised(rgb: np.ndarray) -> torch.Tensor:
    pixels = torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1) / 255
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def test_image_short_side_224_bicubic_then_centre_crop():
    pixels = (np.random.default_rng(0).random((200, 300, 3)) * 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    out = processors()["image"](image)
    assert out.shape == (3, 224, 224)
    resized = np.asarray(image.resize((336, 224), Image.Resampling.BICUBIC))  # int(224 * 300 / 200) = 336
    expected = _normalised(resized[:, 56:280])  # left offset (336 - 224) // 2
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_video_is_five_clips_of_two_frames_in_three_crops(tmp_path):
    folder = tmp_path / "video"
    folder.mkdir()
    for index in range(20):  # 10 s at the folder rate of 2 fps; frame k has the value 10 k in every pixel
        Image.fromarray(np.full((240, 320, 3), 10 * index, dtype=np.uint8)).save(folder / f"f_{index:03d}.png")
    video = processors(frame_folder_fps=2.0)["video"]
    out = video(folder)
    assert out.shape == video.block_shape == (15, 3, 2, 224, 224)
    # starts 0, 2, 4, 6, 8 s; frames [4k, 4k + 4): the first and the last of each clip
    assert video.clip_indices(20, 2.0) == [[0, 3], [4, 7], [8, 11], [12, 15], [16, 19]]
    red = out[:, 0, :, 0, 0] * CLIP_STD[0] + CLIP_MEAN[0]  # (15, 2) un-normalised red value of each frame
    expected = torch.tensor([[10 * a / 255, 10 * b / 255] for a, b in ([0, 3], [4, 7], [8, 11], [12, 15], [16, 19])])
    torch.testing.assert_close(red, expected.repeat_interleave(3, dim=0), atol=1e-5, rtol=0)  # clip-major


def test_short_video_clips_all_start_at_zero():
    assert clip_bounds(1.5, 2.0, 5) == [(0, 2)] * 5
    assert [float(start) for start, _ in clip_bounds(10.0, 2.0, 3)] == [0.0, 4.0, 8.0]


def test_spatial_crops_are_start_centre_end_of_the_long_side():
    frame = torch.arange(224 * 299, dtype=torch.float32).view(1, 224, 299)
    crops = uniform_crops(frame, 224, 3)
    assert [int(crop[0, 0, 0]) for crop in crops] == [0, 38, 75]  # offsets 0, ceil(75 / 2), 75
    assert [tuple(crop.shape) for crop in crops] == [(1, 224, 224)] * 3


def test_audio_is_three_clips_of_128_by_204_fbank(tmp_path):
    rate, seconds = 16000, 5.0
    t = np.arange(int(rate * seconds)) / rate
    soundfile.write(tmp_path / "tone.wav", 0.3 * np.sin(2 * np.pi * 440 * t), rate, subtype="PCM_16")
    audio = processors()["audio"]
    out = audio(tmp_path / "tone.wav")
    assert out.shape == audio.block_shape == (3, 1, 128, 204)
    # a 2 s clip has 198 frames of 25 ms every 10 ms; the 6 padded frames are 0 before normalisation
    torch.testing.assert_close(out[..., 198:], torch.full_like(out[..., 198:], 4.268 / 9.138))
    assert out[..., :198].std() > 0.1 and torch.isfinite(out).all()


def test_faithful_in_place_centring_changes_overlapping_clips_only(tmp_path):
    rate = 16000
    noise = np.random.default_rng(0).normal(0.1, 0.2, size=int(rate * 3.0)).clip(-1, 1)  # 3 s: clips overlap
    soundfile.write(tmp_path / "noise.wav", noise, rate, subtype="PCM_16")
    fixed = processors()["audio"](tmp_path / "noise.wav")
    faithful = processors(centre_clips_in_place=True)["audio"](tmp_path / "noise.wav")
    torch.testing.assert_close(fixed[0], faithful[0])  # the first clip is centred on its own in both
    assert not torch.allclose(fixed[1], faithful[1])  # the second sees samples the first already shifted


@pytest.mark.parametrize("crops", [1, 3])
def test_crop_count_sets_the_block_shape(crops):
    video = processors(video_clips=2, video_crops=crops)["video"]
    assert video.block_shape == (2 * crops, 3, 2, 224, 224)
