"""Filling the frozen-feature cache with the model's towers, and attaching it to datasets.

Storage and keys are in `chatbridge/data/feature_cache.py`; this half needs the model (to run the towers and to
fingerprint their weights), so it lives with training. Rank 0 fills missing entries before the first step; the
other ranks wait and only read.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from chatbridge.config import DatasetConfig
from chatbridge.data.datasets.base import MediaLoader, resolve_media
from chatbridge.data.feature_cache import FeatureCache, media_set_key, preprocessing_fingerprint
from chatbridge.data.processors.errors import MediaError
from chatbridge.models.chatbridge import ChatBridgeModel

logger = logging.getLogger(__name__)


def tower_fingerprint(model: ChatBridgeModel, modality: str) -> str:
    """sha256 of the routed tower's class and every tensor it holds (weights decide the features)."""
    _, tower = model.encoder_for(modality)
    digest = hashlib.sha256(type(tower).__qualname__.encode())
    for name, tensor in tower.state_dict().items():
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def attach_feature_caches(
    sources: Mapping[str, Any],
    datasets: Mapping[str, DatasetConfig],
    model: ChatBridgeModel,
    root: Path,
    fill_missing: bool,
) -> dict[str, list[str]]:
    """Make every dataset read what it can from the cache under `root`; returns dataset -> cached modalities.

    Each tower is fingerprinted once (EVA-g holds 2 GB of weights). Sources without a per-file media loader (e.g.
    shards) read their media directly.
    """
    fingerprint = functools.cache(lambda modality: tower_fingerprint(model, modality))
    cached = {}
    for name, source in sources.items():
        media = getattr(source, "media", None)
        if not isinstance(media, MediaLoader) or not hasattr(source, "rows"):
            logger.info("feature cache: %s reads its media directly (no per-file media folder)", name)
            continue
        caches = _dataset_caches(name, source, datasets[name], model, root, fill_missing, fingerprint)
        source.media = media.with_feature_caches(caches)
        cached[name] = sorted(caches)
    return cached


def _dataset_caches(  # noqa: PLR0913 - what one dataset's caches need
    name: str,
    source: Any,
    dataset: DatasetConfig,
    model: ChatBridgeModel,
    root: Path,
    fill_missing: bool,
    fingerprint: Callable[[str], str],
) -> dict[str, FeatureCache]:
    """The complete caches of one dataset's cacheable modalities (filled first when `fill_missing`)."""
    caches = {}
    for modality in source.media.modalities:
        preprocessing = preprocessing_fingerprint(modality, dataset.processor)
        if preprocessing is None:
            logger.info("feature cache: %s/%s not cached (preprocessing is random or not cacheable)", name, modality)
            continue
        cache = FeatureCache(root, modality, fingerprint(modality), preprocessing)
        media = media_set_key(source.media.roots[modality], (row.media_id for row in source.rows))
        if fill_missing and not cache.is_complete_for(name, media):
            written = fill(cache, name, source, model, media)
            logger.info("feature cache: %s/%s: wrote %d entries", name, modality, written)
        if cache.is_complete_for(name, media):
            caches[modality] = cache
    return caches


def fill(  # noqa: PLR0913 - the cache, what fills it, and the media set it is then complete for
    cache: FeatureCache, name: str, source: Any, model: ChatBridgeModel, media: str, batch_size: int = 16
) -> int:
    """Compute the missing entries of `source`'s media of `cache.modality`, then mark the cache complete for `name`
    with `media` (its `media_set_key`); returns how many entries were written.

    Unusable media are left out (training skips them the same way, as "missing" from the cache).
    """
    modality, processor = cache.modality, source.media.processors[cache.modality]
    todo = _missing_paths(cache, modality, source.media.roots[modality], [row.media_id for row in source.rows])
    written = 0
    for start in tqdm(range(0, len(todo), batch_size), desc=f"feature cache {name}/{modality}", unit="batch"):
        blocks = []
        for path in todo[start : start + batch_size]:
            try:
                blocks.append((path, processor(path, False, None)))  # deterministic preprocessing: no generator
            except MediaError:
                continue
        written += _encode_and_write(cache, model, blocks)
    cache.mark_complete(name, media)
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
    device = next(model.encoder_for(cache.modality)[1].parameters()).device
    features = model.tower_features(cache.modality, items.flatten(0, 1).to(device))  # (N*S, L, D)
    features = features.unflatten(0, items.shape[:2]).cpu()  # (N, S, L, D)
    for (path, _), block in zip(blocks, features, strict=True):
        cache.write(path, block)
    return len(blocks)
