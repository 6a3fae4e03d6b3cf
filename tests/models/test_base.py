"""`on_white`: the image as aesq shows it, which aesq's own models and thumbnails judge."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aesq.core.images import PixelBudget, decode_image
from aesq.models.base import NATIVE_CENTRE, native_centre, native_size, on_white
from tests.helpers import photo, png_bytes, transparent_sticker

WHITE = (255, 255, 255)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "RGBa", "PA"])
def test_transparent_areas_are_white_and_opaque_ones_keep_their_colour(mode):
    sticker = transparent_sticker()
    image = sticker.convert(mode)
    shown = on_white(image)
    assert shown.mode == "RGB"
    assert shown.getpixel((10, 10)) == WHITE  # transparent, a photograph's colour stored under it
    opaque = (sticker.width - 10, 10)
    assert shown.getpixel(opaque) == image.convert("RGBA").convert("RGB").getpixel(opaque)


def test_palette_transparency_is_white():
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, 255, 0, 0])
    image.putpixel((0, 0), 0)
    decoded = decode_image(_png_with_transparency(image), 10**6, PixelBudget(10**6))
    assert decoded.mode == "P"
    assert on_white(decoded).getpixel((0, 0)) == WHITE and on_white(decoded).getpixel((1, 1)) == (255, 0, 0)


def _png_with_transparency(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    return buffer.getvalue()


def test_opaque_rgb_is_returned_as_it_is():
    image = photo("coffee")
    assert on_white(image) is image


def test_a_reduced_image_keeps_its_native_size_and_its_native_centre_goes_on_white_too():
    large = transparent_sticker().resize((3000, 2000))
    alpha = np.zeros((2000, 3000), dtype=np.uint8)  # transparent everywhere but a band left of the centre
    alpha[:, :1400] = 255
    large.putalpha(Image.fromarray(alpha))
    decoded = decode_image(png_bytes(large), 64_000_000, PixelBudget(64_000_000))
    assert decoded.mode == "RGBA" and NATIVE_CENTRE in decoded.info
    shown = on_white(decoded)
    assert native_size(shown) == (3000, 2000)
    centre = np.asarray(native_centre(shown))
    assert centre.shape == (512, 512, 3)
    assert (centre[:, -50:] == 255).all() and not (centre[:, :50] == 255).all()
