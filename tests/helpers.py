"""Small builders of real test images and objects (generated in the tests, never committed)."""

from __future__ import annotations

import io

import numpy as np
from minio import Minio
from PIL import Image
from skimage import data as skdata


def photo(name: str) -> Image.Image:
    """A real photograph bundled with scikit-image, as RGB."""
    pixels = getattr(skdata, name)()
    return Image.fromarray(pixels).convert("RGB")


def jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as JPEG."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: Image.Image) -> bytes:
    """Encode an image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def put(client: Minio, bucket: str, key: str, payload: bytes, metadata: dict[str, str] | None = None) -> None:
    """Upload bytes as an object."""
    client.put_object(bucket, key, io.BytesIO(payload), len(payload), metadata=metadata)


def noise_image(seed: int, size: int = 64) -> Image.Image:
    """A small random RGB image, distinct per seed."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))
