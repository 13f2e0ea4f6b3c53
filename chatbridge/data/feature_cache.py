"""Frozen-feature cache: the frozen towers' outputs, computed once and read from disk afterwards.

With frozen encoders and deterministic preprocessing, an image's (or a video's frames') EVA features are the same
at every epoch, so recomputing them is the largest avoidable cost of training (EVA-g is 1 B parameters, and a video
costs 4 passes). Entries are keyed by the media file and by two fingerprints: of the tower's weights and of the
preprocessing settings. A cache built for other weights or other preprocessing therefore lives in another folder
and is never read; each entry also records its key, and a mismatch (a moved or edited cache) raises instead of
being used.

Only what is deterministic can be cached: images without augmentation, and videos whose `frame_sampling` is fixed
(`segment_middle` or `uniform`; the default random frame per segment in training changes every epoch). Audio is
not cached: its training segments are random and the audio tower is cheap next to EVA.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from chatbridge.config import ProcessorConfig
from chatbridge.data.datasets.base import resolve_media, run_processor
from chatbridge.data.processors.errors import MediaError
from chatbridge.models.chatbridge import ChatBridgeModel

logger = logging.getLogger(__name__)
COMPLETE_FILE = "complete.json"
PREPROCESSING_FIELDS = {
    "image": ("image_size", "mean", "std", "antialias", "augment"),
    "video": ("image_size", "mean", "std", "antialias", "augment", "num_frames", "frame_sampling"),
}


class StaleCacheError(RuntimeError):
    """A cache entry whose recorded key differs from the one it was looked up with."""


def tower_fingerprint(model: ChatBridgeModel, modality: str) -> str:
    """sha256 of the tower's class and every tensor it holds (weights decide the features)."""
    tower = model.image_encoder if modality in ("image", "video") else model.audio_encoder
    digest = hashlib.sha256(type(tower).__qualname__.encode())
    for name, tensor in tower.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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

    def is_complete_for(self, dataset: str, count: int) -> bool:
        """Whether `fill` finished for `dataset` with `count` rows under this key."""
        marker = self.folder / COMPLETE_FILE
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        return done.get(dataset) == count

    def mark_complete(self, dataset: str, count: int) -> None:
        marker = self.folder / COMPLETE_FILE
        done = json.loads(marker.read_text()) if marker.is_file() else {}
        marker.write_text(json.dumps(done | {dataset: count}, indent=1, sort_keys=True))


class CachedFeatureReader:
    """Stands in for a processor: the same call, features (S, L, D) instead of pixels."""

    def __init__(self, cache: FeatureCache) -> None:
        self.cache = cache

    def __call__(self, media: Path, *_: Any) -> Tensor:
        return self.cache.read(Path(media))


def fill(cache: FeatureCache, name: str, source: Any, model: ChatBridgeModel, batch_size: int = 16) -> int:
    """Compute the missing entries of `source`'s media of `cache.modality`; returns how many were written.

    Unusable media are left out (training skips them the same way, as "missing" from the cache).
    """
    modality, processor = cache.modality, source.media.processors[cache.modality]
    root = source.media.roots[modality]
    todo = _missing_paths(cache, modality, root, [row.media_id for row in source.rows])
    written = 0
    generator = torch.Generator().manual_seed(0)  # unused by deterministic preprocessing; processors take one
    for start in tqdm(range(0, len(todo), batch_size), desc=f"feature cache {name}/{modality}", unit="batch"):
        blocks = []
        for path in todo[start : start + batch_size]:
            try:
                blocks.append((path, run_processor(modality, processor, path, False, generator)))
            except MediaError:
                continue
        written += _encode_and_write(cache, model, blocks)
    cache.mark_complete(name, len(source.rows))
    return written


def _missing_paths(cache: FeatureCache, modality: str, root: Path, media_ids: list[str]) -> list[Path]:
    paths = []
    for media_id in dict.fromkeys(media_ids):
        try:
            path = resolve_media(modality, root, media_id)
        except MediaError:
            continue
        if not cache.entry(path).is_file():
            paths.append(path)
    return paths


@torch.no_grad()
def _encode_and_write(cache: FeatureCache, model: ChatBridgeModel, blocks: list[tuple[Path, Tensor]]) -> int:
    if not blocks:
        return 0
    items = torch.stack([pixels.unsqueeze(0) if cache.modality == "image" else pixels for _, pixels in blocks])
    device = next(model.image_encoder.parameters()).device
    features = model.tower_features(cache.modality, items.flatten(0, 1).to(device))  # (N*S, L, D)
    features = features.unflatten(0, items.shape[:2]).cpu()  # (N, S, L, D)
    for (path, _), block in zip(blocks, features, strict=True):
        cache.write(path, block)
    return len(blocks)


def use_feature_cache(  # noqa: PLR0913 - what one dataset's switch needs
    name: str,
    source: Any,
    processor: ProcessorConfig,
    model: ChatBridgeModel,
    root: Path,
    fill_missing: bool,
    fingerprint: Callable[[str], str] | None = None,
) -> list[str]:
    """Switch `source` to cached features for every modality that can use them; returns those modalities.

    `fingerprint` (modality -> tower fingerprint) lets a caller with many datasets hash each tower once (EVA-g is
    2 GB). Sources without a media folder loader (e.g. shards) are left alone. With `fill_missing`, incomplete
    caches are filled first (rank 0 does this; the others wait and only read).
    """
    media = getattr(source, "media", None)
    if media is None or not hasattr(source, "rows"):
        logger.info("feature cache: %s reads its media directly (no per-file media folder)", name)
        return []
    cached = []
    for modality in media.modalities:
        preprocessing = preprocessing_fingerprint(modality, processor)
        if preprocessing is None:
            logger.info("feature cache: %s/%s not cached (preprocessing is random or not cacheable)", name, modality)
            continue
        tower = (fingerprint or (lambda m: tower_fingerprint(model, m)))(modality)
        cache = FeatureCache(root, modality, tower, preprocessing)
        if fill_missing and not cache.is_complete_for(name, len(source.rows)):
            logger.info("feature cache: %s/%s: wrote %d entries", name, modality, fill(cache, name, source, model))
        if cache.is_complete_for(name, len(source.rows)):
            media.processors[modality] = CachedFeatureReader(cache)
            cached.append(modality)
    return cached
