"""The one small interface every scorer and embedder implements.

A model is built with a weights folder and a device, loads its weights once in `setup()`
(once per worker process), then handles whole batches of decoded RGB images.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Score:
    """One image's score plus the raw outputs that explain it."""

    value: float
    raw: dict[str, float] = field(default_factory=dict)


class _Model(ABC):
    """Shared construction: a weights folder (may be unused) and a torch device name."""

    name: ClassVar[str]

    def __init__(self, weights_dir: Path | None = None, device: str = "cpu") -> None:
        self.weights_dir = weights_dir
        self.device = device

    def setup(self) -> None:
        """Load weights; called once per worker before the first batch."""


class Scorer(_Model):
    """Maps a batch of images to one score each."""

    version: ClassVar[str]

    @abstractmethod
    def score(self, images: Sequence[Image.Image]) -> list[Score]:
        """Score a batch.

        Args:
            images: decoded RGB images, any size.

        Returns:
            One `Score` per image, in input order.
        """


class Embedder(_Model):
    """Maps a batch of images to L2-normalised vectors of a fixed dimension."""

    dimension: ClassVar[int]

    @abstractmethod
    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed a batch.

        Args:
            images: decoded RGB images, any size.

        Returns:
            float32 array of shape (len(images), dimension), each row of unit length.
        """
