"""The shared image measurements measure what they claim, on synthetic images with a known answer and on real
photographs under graded distortions, and see a large image decoded reduced as at full size."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from aesq.core.images import PixelBudget, decode_image
from aesq.models.measurements import Measurements, blockiness, jpeg_quality, noise_sigma, sharpness
from tests.helpers import jpeg_bytes, photo


def _ramp(height: int = 256, width: int = 256) -> np.ndarray:
    """A smooth diagonal luma ramp (8-bit units, float), no noise and no edges."""
    rows, cols = np.mgrid[0:height, 0:width]
    return (40 + 0.3 * rows + 0.2 * cols).astype(np.float32)


@pytest.mark.parametrize("sigma", [2.0, 5.0, 10.0, 20.0])
def test_noise_sigma_recovers_the_added_noise(sigma: float) -> None:
    """Gaussian noise of a known sigma on a ramp reads back within 5 %; the ramp alone reads 0."""
    noisy = _ramp() + np.random.default_rng(1).normal(0.0, sigma, (256, 256)).astype(np.float32)
    assert noise_sigma(_ramp()) == pytest.approx(0.0, abs=1e-3)
    assert noise_sigma(noisy) == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("sigma", [3.0, 8.0])
@pytest.mark.parametrize("name", ["brick", "camera", "astronaut"])
def test_noise_sigma_reads_grain_not_texture(name: str, sigma: float) -> None:
    """On real photographs, a brick wall included, the estimate stays near the true grain: under 3 grey levels on
    the clean photo (the bricks' texture is detail, not noise), within 25 % of added Gaussian noise. (A texture
    as fine as grain filling the whole frame, such as scikit-image's grass, still reads as grain.)"""
    luma = np.asarray(photo(name).convert("L"), dtype=np.float32)
    noisy = np.clip(luma + np.random.default_rng(3).normal(0.0, sigma, luma.shape), 0, 255).round()
    clean_sigma = noise_sigma(luma)
    assert clean_sigma < 3.0
    assert noise_sigma(noisy.astype(np.float32)) == pytest.approx(math.hypot(clean_sigma, sigma), rel=0.25)


def test_sharpness_falls_with_every_step_of_blur() -> None:
    """On real photographs, each larger Gaussian blur radius gives a lower sharpness."""
    for name in ("astronaut", "coffee", "camera"):
        image = photo(name)
        values = [
            Measurements(image.filter(ImageFilter.GaussianBlur(radius)) if radius else image).sharpness_lap_std
            for radius in (0, 0.5, 1, 2, 4)
        ]
        assert values == sorted(values, reverse=True) and len(set(values)) == len(values), (name, values)


def test_sharpness_does_not_count_noise_as_detail() -> None:
    """Pure noise on a flat image has no detail: its noise-compensated Laplacian spread is under a tenth of
    the raw spread (sqrt(20) sigma, about 45 grey levels for sigma 10)."""
    flat_noise = (128 + np.random.default_rng(2).normal(0, 10, (256, 256))).astype(np.float32)
    assert sharpness(flat_noise) < 0.1 * np.sqrt(20) * 10


def test_blockiness_rises_as_jpeg_quality_falls() -> None:
    """About 1 on a clean photo, higher at each lower JPEG quality, and exactly 1 on a flat crop."""
    clean = photo("chelsea")
    values = [Measurements(clean).blockiness_ratio] + [
        Measurements(Image.open(io.BytesIO(jpeg_bytes(clean, quality)))).blockiness_ratio for quality in (50, 15, 5)
    ]
    assert values[0] == pytest.approx(1.0, abs=0.05)
    assert values == sorted(values), values
    assert blockiness(np.full((64, 64), 77.0, dtype=np.float32)) == 1.0


@pytest.mark.parametrize("name", ["chelsea", "camera", "astronaut"])
def test_jpeg_quality_is_read_back_from_the_decoded_pixels(name: str) -> None:
    """The quality a photograph was saved at reads back within 3 from its decoded pixels alone, so the estimate
    falls with every step down in quality."""
    clean = photo(name)
    for quality in (90, 70, 45, 25, 12, 5):
        estimate = Measurements(Image.open(io.BytesIO(jpeg_bytes(clean, quality)))).jpeg_quality
        assert estimate == pytest.approx(quality, abs=3), (quality, estimate)


def test_jpeg_quality_is_100_without_a_quantisation_lattice() -> None:
    """Never compressed, or compressed and then resized, blurred or noised (sigma 12): no lattice, 100. Drawings
    whose blocks repeat a few coefficient values (graph paper, a tiled pattern, two-colour pixel art) and ramps
    are not taken for one."""
    clean = photo("astronaut")
    compressed = Image.open(io.BytesIO(jpeg_bytes(clean, 30))).convert("RGB")
    noise = np.random.default_rng(4).normal(0, 12, (512, 512, 3))
    noisy = np.clip(np.asarray(compressed, dtype=np.float32) + noise, 0, 255)
    rows, cols = np.mgrid[0:512, 0:512]
    graph_paper = np.where((rows % 16 == 0) | (cols % 16 == 0), 90, 250).astype(np.uint8)
    tile = np.random.default_rng(8).integers(0, 256, (16, 16)).astype(np.uint8)
    sprite = np.random.default_rng(9).choice(np.array([60, 90], dtype=np.uint8), (128, 128))
    cases = {
        "png": clean,
        "resized": compressed.resize((500, 500), Image.Resampling.BICUBIC),
        "blurred": compressed.filter(ImageFilter.GaussianBlur(1)),
        "noised": Image.fromarray(noisy.round().astype(np.uint8)),
        "flat fills": _flat_fills(),
        "graph paper": Image.fromarray(graph_paper),
        "tiles": Image.fromarray(np.tile(tile, (32, 32))),
        "two-colour pixel art x4": Image.fromarray(sprite).resize((512, 512), Image.Resampling.NEAREST),
    }
    for case, image in cases.items():
        assert Measurements(image).jpeg_quality == 100.0, case
    assert jpeg_quality(np.tile(tile, (32, 32)).astype(np.float32)) == 100.0
    assert jpeg_quality(_ramp()) == 100.0


def _flat_fills(shapes: int = 40, seed: int = 5, ellipses: bool = True) -> Image.Image:
    """A flat-fill drawing: overlapping rectangles (and ellipses) of solid colour on white."""
    image = Image.new("RGB", (800, 600), "white")
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(seed)
    for _ in range(shapes):
        x, y = int(rng.integers(0, 700)), int(rng.integers(0, 500))
        width, height = (int(v) for v in rng.integers(20, 300, 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if ellipses and rng.random() < 0.5 else draw.rectangle
        shape((x, y, x + width, y + height), fill=colour)
    return image


def _nearest_upscale(image: Image.Image, factor: float) -> Image.Image:
    """The image shrunk by `factor` (box filter), then enlarged back to its size by nearest neighbour: blocks of
    floor(factor) or ceil(factor) repeated pixels."""
    small = image.resize((round(image.width / factor), round(image.height / factor)), Image.Resampling.BOX)
    return small.resize(image.size, Image.Resampling.NEAREST)


@pytest.mark.parametrize("factor", [2, 2.5, 3, 4.25, 8, 16])
def test_block_side_of_a_nearest_neighbour_upscale(factor: float) -> None:
    """Whole or fractional, the factor of a nearest-neighbour upscale of a photograph reads back within 2 %."""
    pixelated = Measurements(_nearest_upscale(photo("coffee"), factor))
    assert pixelated.block_side == pytest.approx(factor, rel=0.02)
    assert pixelated.effective_megapixels == pytest.approx(pixelated.megapixels / factor**2, rel=0.04)


def test_pixelated_image_is_measured_on_its_own_pixels() -> None:
    """Grain of sigma 6 enlarged into 4-px blocks reads 6 (one pixel per block), not the near 0 of the flat block
    insides, and the block edges are not JPEG block borders."""
    grain = np.random.default_rng(7).normal(128, 6, (128, 128)).round().astype(np.uint8)
    pixelated = Measurements(Image.fromarray(grain).resize((512, 512), Image.Resampling.NEAREST))
    assert pixelated.block_side == 4.0
    assert pixelated.noise_sigma == pytest.approx(6.0, rel=0.1)
    assert noise_sigma(pixelated.native_luma) < 3.0
    assert pixelated.blockiness_ratio == pytest.approx(1.0, abs=0.05)


def test_block_side_is_1_for_photographs_drawings_and_flat_skies() -> None:
    """Photographs, flat-fill drawings (rectangles only too: long runs of equal lines, but irregular ones), a bar
    chart, a sky graded only top to bottom over textured ground, stripes (too few runs) and a bicubic
    upscale are not pixel blocks."""
    sky = np.broadcast_to(np.linspace(200, 120, 384)[:, None], (384, 512)).copy()
    sky[192:] = np.random.default_rng(6).normal(90, 15, (192, 512))
    stripes = np.repeat(np.array([0, 128, 255] * 3, dtype=np.uint8), 57)[:, None].repeat(512, axis=1)
    bars = np.full((480, 640), 255, dtype=np.uint8)
    for index, height in enumerate(np.random.default_rng(10).integers(40, 440, 20)):
        bars[480 - height :, 20 + index * 30 : 40 + index * 30] = 40 + 9 * index
    images = {name: photo(name) for name in ("astronaut", "camera", "brick", "grass")} | {
        "flat fills": _flat_fills(),
        **{f"rectangles {seed}": _flat_fills(20, seed, ellipses=False) for seed in range(5)},
        "bar chart": Image.fromarray(bars),
        "sky": Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8)),
        "stripes": Image.fromarray(stripes),
        "bicubic x4": photo("chelsea").resize((113, 75)).resize((451, 300), Image.Resampling.BICUBIC),
    }
    for name, image in images.items():
        assert Measurements(image).block_side == 1.0, name


def test_tonal_figures_of_a_known_histogram() -> None:
    """Half black, half white: mean luma 1/2, half the pixels clipped each way, full tonal range; flat grey: none."""
    split = Measurements(Image.fromarray(np.repeat([[0, 255]], 100, axis=0).repeat(50, axis=1).astype(np.uint8)))
    assert split.exposure_mean == pytest.approx(0.5)
    assert (split.clipped_shadows, split.clipped_highlights) == (0.5, 0.5)
    assert (split.black_level, split.tonal_range) == (0.0, 1.0)
    grey = Measurements(Image.new("RGB", (100, 100), (128, 128, 128)))
    assert (grey.tonal_range, grey.clipped_highlights, grey.clipped_shadows) == (0.0, 0.0, 0.0)


def test_upscaled_photo_has_almost_no_fine_detail() -> None:
    """A photo enlarged 4x loses almost nothing when halved and doubled; the photo itself loses a clear share."""
    image = photo("astronaut")
    upscaled = image.resize((image.width // 4, image.height // 4), Image.Resampling.BICUBIC).resize(image.size)
    assert Measurements(upscaled).fine_detail_share < 0.002 < Measurements(image).fine_detail_share


@pytest.mark.slow
def test_large_image_decoded_reduced_measures_its_native_pixels() -> None:
    """A 4200x3000 photo decoded reduced (as aesq decodes it) gives exactly the native-grid figures (noise,
    blocks, upscaling, size) of the full-size image, and working-copy figures within a small margin."""
    stored = photo("coffee").resize((4200, 3000), Image.Resampling.BICUBIC)
    payload = jpeg_bytes(stored, 40)
    full = Measurements(Image.open(io.BytesIO(payload)).convert("RGB"))
    decoded = decode_image(payload, 64_000_000, PixelBudget(64_000_000))
    reduced = Measurements(decoded)
    assert decoded.width < 4200
    figures = ("noise_sigma", "blockiness_ratio", "jpeg_quality", "block_side", "fine_detail_share", "short_side")
    for figure in (*figures, "megapixels"):
        assert getattr(reduced, figure) == getattr(full, figure), figure
    assert reduced.sharpness_lap_std == pytest.approx(full.sharpness_lap_std, rel=0.05)
    assert reduced.exposure_mean == pytest.approx(full.exposure_mean, abs=0.005)
