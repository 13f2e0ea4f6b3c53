"""One model-ready sample, as datasets produce it and `collate` consumes it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from chatbridge.config import Modality
from chatbridge.data.tokenize import EncodedSample


@dataclass
class Medium:
    """One medium of a sample.

    Attributes:
        modality: image, video or audio.
        tensor: preprocessed input (image (3, H, W), video (T, 3, H, W), audio (S, T, F)), or, when `cached`, the
            frozen encoder's features (S, L, D) read from the feature cache.
        cached: whether `tensor` holds cached encoder features instead of encoder input.
    """

    modality: Modality
    tensor: Tensor
    cached: bool = False


@dataclass
class MultimodalSample:
    """Token ids with one soft-token slot block per medium, the media in placeholder order, and its origin.

    Attributes:
        encoded: Token ids, labels and where each medium's slots start.
        media: One `Medium` per `<query>` placeholder, in order.
        source: Name of the dataset it came from.
        index: Its index in that dataset.
    """

    encoded: EncodedSample
    media: list[Medium]
    source: str
    index: int
