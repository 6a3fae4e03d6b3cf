"""Image validation and decoding on images built in memory: facts, rejection reasons, RGB conversion."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from aesq.images import ImageFacts, ImageRejected, decode_rgb, inspect_image
from tests.helpers import jpeg_bytes, noise_image, photo, png_bytes

LIMIT = 10_000_000
WHITE, RED = (255, 255, 255), (255, 0, 0)


def _encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def _animated_gif(colours: list[str], size: tuple[int, int] = (10, 8)) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _rgba_with_transparent_corner() -> Image.Image:
    image = Image.new("RGBA", (4, 3), (*RED, 255))
    image.putpixel((0, 0), (0, 0, 255, 0))
    return image


def _palette_with_transparent_index() -> bytes:
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, *RED])
    image.putpixel((0, 0), 0)
    return _encode(image, "PNG", transparency=0)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


PHOTO = photo("astronaut").crop((0, 0, 300, 200))
BILEVEL_3000 = png_bytes(Image.new("1", (3000, 3000)))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg_bytes(PHOTO), ImageFacts(width=300, height=200, format="JPEG", mode="RGB", frames=1)),
        (png_bytes(PHOTO.convert("L")), ImageFacts(width=300, height=200, format="PNG", mode="L", frames=1)),
        (png_bytes(_rgba_with_transparent_corner()), ImageFacts(width=4, height=3, format="PNG", mode="RGBA", frames=1)),
        (_animated_gif(["red", "green", "blue"]), ImageFacts(width=10, height=8, format="GIF", mode="P", frames=3)),
    ],
    ids=["jpeg", "grey-png", "rgba-png", "animated-gif"],
)
def test_inspect_reports_facts(data, expected):
    assert inspect_image(data, LIMIT) == expected


@pytest.mark.parametrize("function", [inspect_image, decode_rgb])
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", r"^empty object \(0 bytes\)$"),
        (np.random.default_rng(0).bytes(4096), r"^not an image"),
        (_truncated(jpeg_bytes(PHOTO)), r"^truncated or corrupt image data"),
        (_truncated(png_bytes(noise_image(1))), r"^truncated or corrupt image data"),
        (png_bytes(Image.fromarray(np.full((8, 8), 40_000, dtype=np.uint16))), r"^unsupported colour mode '(I;16|I)'$"),
        (_encode(Image.fromarray(np.zeros((8, 8), dtype=np.float32)), "TIFF"), r"^unsupported colour mode 'F'$"),
    ],
    ids=["empty", "random-bytes", "truncated-jpeg", "truncated-png", "16-bit-png", "float-tiff"],
)
def test_unusable_bytes_are_rejected_with_a_reason(function, data, reason):
    with pytest.raises(ImageRejected, match=reason):
        function(data, LIMIT)


@pytest.mark.parametrize("function", [inspect_image, decode_rgb])
def test_too_many_pixels_is_rejected(function):
    assert len(BILEVEL_3000) < 5_000  # a bomb: tiny file, 9 megapixels
    with pytest.raises(ImageRejected, match=r"3000x3000 = 9,000,000 pixels exceeds the limit of 1,000,000"):
        function(BILEVEL_3000, 1_000_000)


def test_pixel_limit_is_checked_before_decoding():
    """Only the PNG header is present: a decoder would report truncation, the header check reports the size."""
    with pytest.raises(ImageRejected, match="exceeds the limit"):
        inspect_image(BILEVEL_3000[:64], 1_000_000)


def test_pixel_limit_is_inclusive():
    assert inspect_image(BILEVEL_3000, 9_000_000).width == 3000
    with pytest.raises(ImageRejected):
        inspect_image(BILEVEL_3000, 8_999_999)


def test_decode_returns_full_resolution_rgb():
    image = decode_rgb(jpeg_bytes(PHOTO), LIMIT)
    assert (image.mode, image.size) == ("RGB", (300, 200))


@pytest.mark.parametrize(
    "data",
    [
        png_bytes(_rgba_with_transparent_corner()),
        png_bytes(_rgba_with_transparent_corner().convert("LA")),
        _palette_with_transparent_index(),
    ],
    ids=["rgba", "la", "palette-with-transparency"],
)
def test_transparent_pixels_become_white(data):
    image = decode_rgb(data, LIMIT)
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == WHITE
    assert image.getpixel((1, 1)) != WHITE


def test_opaque_rgba_pixels_keep_their_colour():
    assert decode_rgb(png_bytes(_rgba_with_transparent_corner()), LIMIT).getpixel((1, 1)) == RED


def test_cmyk_jpeg_is_converted_to_matching_rgb():
    image = decode_rgb(jpeg_bytes(PHOTO.convert("CMYK"), quality=95), LIMIT)
    assert (image.mode, image.size) == ("RGB", PHOTO.size)
    difference = np.abs(np.asarray(image, dtype=np.int16) - np.asarray(PHOTO, dtype=np.int16))
    assert difference.mean() < 8


def test_grey_becomes_equal_rgb_channels():
    image = decode_rgb(png_bytes(Image.new("L", (5, 5), 77)), LIMIT)
    assert image.mode == "RGB"
    assert image.getpixel((2, 2)) == (77, 77, 77)


def test_animated_gif_decodes_its_first_frame():
    assert decode_rgb(_animated_gif(["red", "green"]), LIMIT).getpixel((0, 0)) == RED
