"""The one small interface every scorer and embedder implements.

A model is built with a weights folder and a device, loads its weights once in `setup()`
(once per worker process), then handles whole batches of decoded images in two steps:
`prepare()` (CPU work such as converting, resizing and normalising, run on prefetch threads while the
accelerator is busy with another batch) and `score_prepared()` / `embed_prepared()` (the model).

Images come in their own 8-bit colour mode (RGB, RGBA, L, LA, P, 1, CMYK, ...), and `prepare()` turns
them into RGB in the order and way the model's upstream code does: a plain `convert("RGB")`, which keeps
whatever colour lies under transparent pixels, before or after resizing as upstream does. aesq's own
models measure what a viewer sees instead: transparent areas on white (`on_white`), as aesq shows images.

Images may come decoded at reduced size (aesq does so for very large ones, keeping at least twice
every model's `input_side`); such an image carries its native size and the native pixels of its
centre in `info`, which `native_size()` and `native_centre()` return for any image.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

# `Image.info` keys of an image decoded at reduced size: its native (width, height), and the native
# pixels of its centre as `native_centre()` crops them from the full-size image.
NATIVE_SIZE = "native_size"
NATIVE_CENTRE = "native_centre"
NATIVE_CENTRE_SIDE = 512
JPEG_BLOCK = 8
# Modes with an alpha channel (premultiplied RGBa too), and the page colour transparent areas are shown on.
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "PA"})
WHITE = (255, 255, 255)


def native_size(image: Image.Image) -> tuple[int, int]:
    """The size of the image as stored, also when it was decoded at reduced size."""
    return image.info.get(NATIVE_SIZE, image.size)


def native_centre(image: Image.Image) -> Image.Image:
    """A central crop of at most NATIVE_CENTRE_SIDE² native pixels, its corner on the 8x8 JPEG block grid
    (pixel-level measures such as noise and compression blocks need native pixels)."""
    if NATIVE_CENTRE in image.info:
        return image.info[NATIVE_CENTRE]
    width, height = image.size
    crop_width, crop_height = min(width, NATIVE_CENTRE_SIDE), min(height, NATIVE_CENTRE_SIDE)
    left = (width - crop_width) // 2 // JPEG_BLOCK * JPEG_BLOCK
    top = (height - crop_height) // 2 // JPEG_BLOCK * JPEG_BLOCK
    return image.crop((left, top, left + crop_width, top + crop_height))


def _composited_on_white(image: Image.Image) -> Image.Image:
    """RGB pixels with transparent areas on white; an RGB image itself (read-only callers need no copy)."""
    if image.mode in ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        background = Image.new("RGB", image.size, WHITE)
        background.paste(rgba, mask=rgba)
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


def on_white(image: Image.Image) -> Image.Image:
    """The image as aesq shows it, transparent areas on white: what aesq's own measurements, its embedder and
    its thumbnails judge. Keeps the native size and native centre (on white too) of a reduced image."""
    shown = _composited_on_white(image)
    if NATIVE_SIZE in image.info:
        shown.info[NATIVE_SIZE] = image.info[NATIVE_SIZE]
        shown.info[NATIVE_CENTRE] = _composited_on_white(image.info[NATIVE_CENTRE])
    return shown


@dataclass(frozen=True)
class Score:
    """One image's score plus the raw outputs that explain it."""

    value: float
    raw: dict[str, float] = field(default_factory=dict)


class _Model(ABC):
    """Shared construction: a weights folder (may be unused) and a torch device name."""

    name: ClassVar[str]
    input_side: ClassVar[int]  # the longest side, in pixels, that `prepare()` resizes an image to

    def __init__(self, weights_dir: Path | None = None, device: str = "cpu") -> None:
        self.weights_dir = weights_dir
        self.device = device

    def setup(self) -> None:
        """Load weights; called once per worker before the first batch."""

    def prepare(self, images: Sequence[Image.Image]) -> Any:
        """CPU-side preprocessing of a non-empty batch, safe to run on several threads at once."""
        return list(images)


class Scorer(_Model):
    """Maps a batch of images to one score each."""

    version: ClassVar[str]

    def score(self, images: Sequence[Image.Image]) -> list[Score]:
        """Prepare and score a batch in one call.

        Args:
            images: decoded images (`aesq.core.images.decode_image`), any size and 8-bit mode.

        Returns:
            One `Score` per image, in input order.
        """
        return self.score_prepared(self.prepare(images)) if images else []

    @abstractmethod
    def score_prepared(self, batch: Any) -> list[Score]:
        """Score a batch that `prepare()` returned.

        Args:
            batch: `prepare()`'s result for a non-empty list of images.

        Returns:
            One `Score` per image, in input order.
        """


class Critic(ABC):
    """A model that can also write a critique of an image per aspect, by text generation."""

    aspects: ClassVar[tuple[str, ...]]  # the aspects it was trained to judge

    def critique(
        self, images: Sequence[Image.Image], aspects: Sequence[str], max_new_tokens: int
    ) -> list[dict[str, str]]:
        """Prepare and critique a batch in one call (see `critique_prepared`)."""
        return self.critique_prepared(self.prepare(images), aspects, max_new_tokens) if images else []  # type: ignore[attr-defined]

    @abstractmethod
    def critique_prepared(self, batch: Any, aspects: Sequence[str], max_new_tokens: int) -> list[dict[str, str]]:
        """Critique a batch that `prepare()` returned, one answer per aspect.

        Args:
            batch: `prepare()`'s result for a non-empty list of images.
            aspects: what to judge, e.g. "Composition & Design".
            max_new_tokens: longest answer, in tokens.

        Returns:
            Per image, in input order: aspect → the model's answer.
        """


class Embedder(_Model):
    """Maps a batch of images to L2-normalised vectors of a fixed dimension."""

    dimension: ClassVar[int]

    def embed(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Prepare and embed a batch in one call.

        Args:
            images: decoded images (`aesq.core.images.decode_image`), any size and 8-bit mode.

        Returns:
            float32 array of shape (len(images), dimension), each row of unit length.
        """
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return self.embed_prepared(self.prepare(images))

    @abstractmethod
    def embed_prepared(self, batch: Any) -> np.ndarray:
        """Embed a batch that `prepare()` returned.

        Args:
            batch: `prepare()`'s result for a non-empty list of images.

        Returns:
            float32 array of shape (batch size, dimension), each row of unit length.
        """
