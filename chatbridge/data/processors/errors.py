"""The one exception media processors raise for bad input, with a machine-readable reason.

The reference silently turned missing audio into all-zero spectrograms and re-sampled on any decoding exception
(docs/reference/chatbridge.md §1.4, §7.3). Here a bad file always raises `MediaError`, and its `reason` lets a dataset
decide what to do (skip, count, fail) without parsing messages or catching decoder-specific exception types.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, get_args

MediaErrorReason = Literal["missing", "empty", "undecodable", "too_short", "non_finite", "too_large"]
"""missing: no such file or folder; empty: zero bytes, zero frames or zero samples (also: a video with no audio
track); undecodable: the decoder rejected the content (random bytes, truncated header, wrong format);
too_short: decodable but too short for one feature frame; non_finite: NaN or infinite samples; too_large: more
pixels or seconds than the processor's limit, refused before it is decoded."""

MEDIA_ERROR_REASONS: tuple[str, ...] = get_args(MediaErrorReason)


class MediaError(Exception):
    """A media file that cannot become a model input.

    Attributes:
        reason: One of `MEDIA_ERROR_REASONS`.
        path: The offending file or folder.
        detail: Free text from the decoder, for humans only.
    """

    def __init__(self, reason: MediaErrorReason, path: str | Path, detail: str = "") -> None:
        if reason not in MEDIA_ERROR_REASONS:
            raise ValueError(f"unknown media error reason {reason!r}; known: {MEDIA_ERROR_REASONS}")
        # All three go to Exception.args so that the error survives pickling (DataLoader workers).
        super().__init__(reason, str(path), detail)
        self.reason = reason
        self.path = str(path)
        self.detail = detail

    def __str__(self) -> str:
        suffix = f": {self.detail}" if self.detail else ""
        return f"{self.reason} media {self.path!r}{suffix}"


def require_file(path: str | Path) -> Path:
    """Checks that `path` is an existing, non-empty file, so decoders only ever see real bytes.

    Raises:
        MediaError: "missing" if there is no file at `path`, "empty" if it has zero bytes.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError("missing", path)
    if path.stat().st_size == 0:
        raise MediaError("empty", path, "zero bytes")
    return path


def require_setting(cfg: Any, key: str) -> Any:
    """A `ProcessorConfig` field an encoder must supply; unset means the config was not resolved against a model.

    Raises:
        ValueError: naming the field and how it is normally filled.
    """
    value = getattr(cfg, key)
    if value is None:
        raise ValueError(
            f"processor.{key} is unset: it comes from the routed encoder's `preprocessing` when the config is "
            "loaded with a model section (chatbridge.config.resolve_processor), or set it explicitly"
        )
    return value


@contextmanager
def decoding(path: Any) -> Iterator[None]:
    """Turns any exception raised by a third-party decoder inside the block into MediaError("undecodable").

    PIL, libsndfile and decord/FFmpeg each raise their own types (OSError, SyntaxError, LibsndfileError,
    DECORDError, RuntimeError...) for corrupt input, so the decode call is the one place where catching broadly is
    right; keep the block to the decoder call itself so that programming errors elsewhere are not relabelled.
    A MediaError raised inside the block passes through unchanged.
    """
    try:
        yield
    except MediaError:
        raise
    except Exception as error:
        raise MediaError("undecodable", path, f"{type(error).__name__}: {error}") from error
