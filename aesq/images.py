"""Decoding object bytes into images, and refusing what is not a usable image with a readable reason."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Modes that convert to RGB without losing meaning; 16/32-bit and float data (masks, depth) are refused.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr"})

# aesq applies its own configurable pixel limit before decoding; PIL's global one would fire first.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(ValueError):
    """The bytes are not an image aesq can score; the message is the stored reason."""


@dataclass(frozen=True)
class ImageFacts:
    """What ingest records about a valid image."""

    width: int
    height: int
    format: str
    mode: str
    frames: int


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily and check everything that can be checked before decoding pixels."""
    if not data:
        raise ImageRejected("empty object (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageRejected("not an image (no known image format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageRejected(f"unreadable image header: {error}") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)"
        )
    if image.mode not in SUPPORTED_MODES:
        raise ImageRejected(f"unsupported colour mode {image.mode!r}")
    return image


def _load(image: Image.Image) -> None:
    """Decode all pixel data so truncated or corrupt files are caught here, not in a model."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageRejected(f"truncated or corrupt image data: {error}") from None


def inspect_image(data: bytes, max_pixels: int) -> ImageFacts:
    """Validate `data` as an image (decoding it fully, at reduced scale where the format allows)."""
    image = _open(data, max_pixels)
    facts = ImageFacts(
        width=image.width,
        height=image.height,
        format=image.format or "unknown",
        mode=image.mode,
        frames=getattr(image, "n_frames", 1),
    )
    image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
    _load(image)
    return facts


def decode_rgb(data: bytes, max_pixels: int) -> Image.Image:
    """Full-resolution RGB pixels of the (first frame of the) image."""
    image = _open(data, max_pixels)
    _load(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")
