"""Frozen-feature cache storage: the frozen towers' outputs, computed once and read from disk afterwards.

With frozen encoders and deterministic preprocessing, an image's (or a video's frames') EVA features are the same
at every epoch, so recomputing them is the largest avoidable cost of training (EVA-g is 1 B parameters, and a video
costs 4 passes). Entries are keyed by the media file and by two fingerprints: of the tower's weights and of the
preprocessing settings. A cache built for other weights or other preprocessing therefore lives in another folder
and is never read; each entry also records its key, and a mismatch (a moved or edited cache) raises instead of
being used.

Only what is deterministic can be cached: images without augmentation, and videos whose `frame_sampling` is fixed
(`segment_middle` or `uniform`; the default random frame per segment in training changes every epoch). Audio is
not cached: its training segments are random and the audio tower is cheap next to EVA.

This module only stores and reads entries; filling them needs the model and lives in
`chatbridge/training/feature_cache.py`. A dataset reads a modality from its cache when the cache is attached to its
media loader (`MediaLoader.with_feature_caches`), and its samples then mark those media as `cached`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from chatbridge.config import ProcessorConfig
from chatbridge.data.processors.errors import MediaError

COMPLETE_FILE = "complete.json"
_PIXELS = ("image_size", "mean", "std", "antialias", "augment")
PREPROCESSING_FIELDS = {
    "image": ("image_processor", *_PIXELS),
    "video": ("video_processor", *_PIXELS, "num_frames", "frame_sampling"),
}


class StaleCacheError(RuntimeError):
    """A cache entry whose recorded key differs from the one it was looked up with."""


def preprocessing_fingerprint(modality: str, processor: ProcessorConfig) -> str | None:
    """sha256 of the settings that shape a media block's pixels; None if they are not deterministic."""
    if modality not in PREPROCESSING_FIELDS or processor.augment:
        return None
    if modality == "video" and processor.frame_sampling in (None, "segment_random"):
        return None
    settings = {name: getattr(processor, name) for name in PREPROCESSING_FIELDS[modality]}
    return hashlib.sha256(json.dumps([modality, settings], sort_keys=True).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """The cache folder for one (modality, tower, preprocessing) key."""

    root: Path
    modality: str
    tower: str
    preprocessing: str

    @property
    def folder(self) -> Path:
        return self.root / self.modality / f"{self.tower[:16]}-{self.preprocessing[:16]}"

    def entry(self, media_path: Path) -> Path:
        name = hashlib.sha256(str(media_path).encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.safetensors"

    def _key(self, media_path: Path) -> dict[str, str]:
        return {"media": str(media_path), "tower": self.tower, "preprocessing": self.preprocessing}

    def write(self, media_path: Path, features: Tensor) -> None:
        """Store features (S, L, D) of one media block (written to a temporary name, then renamed)."""
        target = self.entry(media_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(".tmp")
        save_file({"features": features.contiguous()}, temporary, metadata=self._key(media_path))
        temporary.replace(target)

    def read(self, media_path: Path) -> Tensor:
        """Features of one media block; MediaError("missing") if absent, StaleCacheError if keyed otherwise."""
        target = self.entry(media_path)
        if not target.is_file():
            raise MediaError("missing", media_path, f"no feature-cache entry {target}")
        with open(target, "rb") as handle:  # the safetensors header: 8-byte length, then JSON with __metadata__
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
        if header.get("__metadata__") != self._key(media_path):
            raise StaleCacheError(f"{target} was written for {header.get('__metadata__')}, not {self._key(media_path)}")
        return load_file(target)["features"]

    def is_complete_for(self, dataset: str, media: str) -> bool:
        """Whether `fill` finished for `dataset` reading these `media` (a `media_set_key`) under this key."""
        marker = self.folder / COMPLETE_FILE
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        return done.get(dataset) == media

    def mark_complete(self, dataset: str, media: str) -> None:
        marker = self.folder / COMPLETE_FILE
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        marker.write_text(json.dumps(done | {dataset: media}, indent=1, sort_keys=True))


def media_set_key(root: Path, media_ids: Iterable[str]) -> str:
    """sha256 of a dataset's media folder and ids: entries are keyed by media path, so a dataset whose folder moved
    (another checkout sharing the cache, a renamed data set) must not count as cached under its old paths."""
    content = [str(root), sorted(set(media_ids))]
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()
