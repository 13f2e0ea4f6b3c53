"""Deterministic generators of small media files for the processor tests (no downloads, no fixtures on disk).

Frames of generated videos and frame folders are solid grey, frame i at level `frame_level(i, n)`, so a test can
tell from the decoded pixels which frames a processor picked. Videos are written with PyAV (`av`, a dev-only
dependency; decord can only read), as H.264 + optional AAC audio in MP4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
from PIL import Image


def frame_level(index: int, num_frames: int) -> int:
    """Grey level of frame `index`: evenly spread over 0..255 so that lossy coding cannot confuse neighbours."""
    return round(255 * index / max(num_frames - 1, 1))


def write_image(path: Path, size: int | tuple[int, int], color: tuple[int, int, int]) -> Path:
    """A solid RGB image; `size` is a side or (width, height); the format follows the suffix (use .png for exact)."""
    width, height = (size, size) if isinstance(size, int) else size
    Image.new("RGB", (width, height), color).save(path)
    return path


def checkerboard(size: int) -> Image.Image:
    """A 1-pixel black/white checkerboard, the worst case for resizing without antialiasing."""
    rows, cols = np.indices((size, size))
    pixels = ((rows + cols) % 2 * 255).astype(np.uint8)
    return Image.fromarray(pixels).convert("RGB")


def write_frame_folder(folder: Path, num_frames: int, size: int = 16) -> Path:
    """A folder of JPEG frames `frame_0000.jpg`... with grey levels `frame_level(i, num_frames)`."""
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(num_frames):
        level = frame_level(index, num_frames)
        Image.new("RGB", (size, size), (level, level, level)).save(folder / f"frame_{index:04d}.jpg", quality=95)
    return folder


def sine(seconds: float, sample_rate: int, freq: float, amplitude: float = 0.5) -> np.ndarray:
    """A mono sine tone (S,) float32."""
    time = np.arange(round(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * time)).astype(np.float32)


def write_wav(path: Path, seconds: float, sample_rate: int, freq: float) -> Path:
    """A mono 16-bit WAV sine tone at half amplitude (any suffix soundfile knows works: .flac, .ogg, .mp3)."""
    soundfile.write(path, sine(seconds, sample_rate, freq), sample_rate)
    return path


def write_random_bytes(path: Path, num_bytes: int = 4096, seed: int = 0) -> Path:
    """Seeded random bytes, e.g. under a .jpg/.wav/.mp4 name, to check that decoders reject garbage."""
    path.write_bytes(np.random.default_rng(seed).bytes(num_bytes))
    return path


def write_video(
    path: Path, num_frames: int, size: int, fps: int = 10, tone_hz: float | None = None, sample_rate: int = 16000
) -> Path:
    """An MP4 of `num_frames` solid grey frames (size x size, size even for yuv420p) at `fps`.

    With `tone_hz`, an AAC mono track holds a sine tone as long as the video, so the audio processor can be
    tested on a video's audio track.
    """
    import av  # dev-only dependency; a local import keeps the other generators usable without it

    with av.open(str(path), "w") as container:
        video = container.add_stream("h264", rate=fps)
        video.width, video.height, video.pix_fmt = size, size, "yuv420p"
        audio = None
        if tone_hz is not None:
            audio = container.add_stream("aac", rate=sample_rate)
            audio.layout = "mono"
        for index in range(num_frames):
            pixels = np.full((size, size, 3), frame_level(index, num_frames), np.uint8)
            container.mux(video.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(video.encode())
        if audio is not None:
            tone = av.AudioFrame.from_ndarray(sine(num_frames / fps, sample_rate, tone_hz)[None], "fltp", "mono")
            tone.sample_rate = sample_rate
            container.mux(audio.encode(tone))
            container.mux(audio.encode())
    return path
