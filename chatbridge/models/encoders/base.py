"""What the model needs from a frozen encoder: the protocol every registered encoder implements.

An encoder is one file in this folder plus one import line in `__init__.py`. The file declares:

1. its config dataclass, a subclass of `chatbridge.config.EncoderConfig`, with its architecture fields and
   defaults and three answers that need no built model: `output_width()`, `num_tokens(modality, item_shape)` and
   `preprocessing(modality)` (the processor and the settings it was trained with);
2. its module, implementing `Encoder` below (items of one modality in, a token sequence per item out, and a
   loader for its official checkpoint);
3. a builder registered in `ENCODERS` whose `cfg` parameter is annotated with the config dataclass (that
   annotation is how the config loader finds the schema of `model.encoders.<key>`).

The model holds encoders by key and routes modalities to them (`model.routes`); an encoder may serve several
modalities (EVA serves images and video frames).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class Encoder(Protocol):
    """A tower from media items to token features.

    Attributes:
        width: width D of every output token.
    """

    width: int

    def __call__(self, items: Tensor, modality: str) -> Tensor:
        """(N, *item_shape) preprocessed items of `modality` -> (N, L, width) tokens."""
        ...

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load the official weight file strictly: every tensor it must set, nothing unexplained."""
        ...
