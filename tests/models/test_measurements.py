"""The shared image measurements measure what they claim, on synthetic images with a known answer and on real
photographs under graded distortions, and see a large image decoded reduced as at full size."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from aesq.core.images import PixelBudget, decode_image
from aesq.models.measurements import Measurements, blockiness, noise_sigma, sharpness
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
    for figure in ("noise_sigma", "blockiness_ratio", "fine_detail_share", "short_side", "megapixels"):
        assert getattr(reduced, figure) == getattr(full, figure), figure
    assert reduced.sharpness_lap_std == pytest.approx(full.sharpness_lap_std, rel=0.05)
    assert reduced.exposure_mean == pytest.approx(full.exposure_mean, abs=0.005)
