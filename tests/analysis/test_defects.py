"""Defect detectors on real photographs, clean and with each defect made by a real image operation."""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageFilter

from aesq.analysis.defects import DETECTORS, Finding, detect_defects
from tests.helpers import jpeg_bytes, photo

CLEAN_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]


def _reopened_jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG save and reload."""
    return Image.open(io.BytesIO(jpeg_bytes(image, quality)))


def _with_noise(image: Image.Image, sigma: float) -> Image.Image:
    """The image with additive Gaussian noise of this standard deviation in grey levels."""
    pixels = np.asarray(image).astype(float)
    noisy = pixels + np.random.default_rng(0).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _warm_tinted(image: Image.Image) -> Image.Image:
    """The image under an orange tint: red lifted, blue cut."""
    tinted = np.asarray(image).astype(float) * [1.0, 0.85, 0.6] + [30, 0, 0]
    return Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8))


def _upscaled(image: Image.Image, factor: int = 4) -> Image.Image:
    """The image shrunk by factor and enlarged back to its size."""
    small = image.resize((image.width // factor, image.height // factor), Image.Resampling.BICUBIC)
    return small.resize(image.size, Image.Resampling.BICUBIC)


DEFECTS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "gaussian blur": ("blur", lambda image: image.filter(ImageFilter.GaussianBlur(4))),
    "darkened": ("underexposure", lambda image: ImageEnhance.Brightness(image).enhance(0.2)),
    "brightened": ("overexposure", lambda image: ImageEnhance.Brightness(image).enhance(3)),
    "contrast squashed": ("low_contrast", lambda image: ImageEnhance.Contrast(image).enhance(0.25)),
    "gaussian noise": ("noise", lambda image: _with_noise(image, 25)),
    "warm tint": ("colour_cast", _warm_tinted),
    "jpeg quality 5": ("compression", lambda image: _reopened_jpeg(image, 5)),
    "tiny": ("low_resolution", lambda image: image.resize((image.width // 4, image.height // 4))),
    "upscaled": ("low_resolution", _upscaled),
}


@pytest.mark.parametrize("name", CLEAN_PHOTOS)
@pytest.mark.parametrize("defect", DEFECTS)
def test_defect_is_flagged_with_its_category(defect: str, name: str) -> None:
    category, make_defect = DEFECTS[defect]
    finding = DETECTORS[category](make_defect(photo(name)))
    assert finding is not None
    assert finding.category == category
    assert 0 < finding.severity <= 1
    assert finding.detail


@pytest.mark.parametrize("name", CLEAN_PHOTOS)
@pytest.mark.parametrize("category", DETECTORS)
def test_clean_photo_is_not_flagged(category: str, name: str) -> None:
    assert DETECTORS[category](photo(name)) is None


@pytest.mark.parametrize("name", CLEAN_PHOTOS)
def test_clean_photos_have_no_findings(name: str) -> None:
    assert detect_defects(photo(name)) == []


@pytest.mark.parametrize("name", CLEAN_PHOTOS)
def test_high_quality_jpeg_has_no_findings(name: str) -> None:
    assert detect_defects(_reopened_jpeg(photo(name), 95)) == []


@pytest.mark.parametrize(
    ("category", "make_defect", "mild", "strong"),
    [
        ("blur", lambda image, radius: image.filter(ImageFilter.GaussianBlur(radius)), 1.5, 4),
        ("underexposure", lambda image, factor: ImageEnhance.Brightness(image).enhance(factor), 0.3, 0.1),
        ("noise", _with_noise, 12, 30),
        ("compression", _reopened_jpeg, 15, 3),
    ],
    ids=["blur", "underexposure", "noise", "compression"],
)
def test_stronger_defect_has_higher_severity(
    category: str, make_defect: Callable[[Image.Image, float], Image.Image], mild: float, strong: float
) -> None:
    clean = photo("coffee")
    mild_finding = DETECTORS[category](make_defect(clean, mild))
    strong_finding = DETECTORS[category](make_defect(clean, strong))
    assert mild_finding is not None and strong_finding is not None
    assert mild_finding.severity < strong_finding.severity


def test_detail_carries_the_measured_figure() -> None:
    finding = DETECTORS["blur"](photo("astronaut").filter(ImageFilter.GaussianBlur(4)))
    assert finding is not None
    assert finding.detail.startswith("variance of Laplacian ")
    assert "blurry below 100" in finding.detail


def test_named_categories_run_only_those() -> None:
    dark = ImageEnhance.Brightness(photo("chelsea")).enhance(0.2)
    assert [finding.category for finding in detect_defects(dark, ["underexposure", "noise"])] == ["underexposure"]
    assert detect_defects(dark, ["noise"]) == []


def test_unknown_category_is_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match="sharpness") as raised:
        detect_defects(photo("chelsea"), ["blur", "sharpness"])
    assert all(category in str(raised.value) for category in DETECTORS)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_other_modes_are_measured(mode: str) -> None:
    clean = photo("astronaut").convert(mode)
    assert detect_defects(clean) == []
    dark = ImageEnhance.Brightness(clean).enhance(0.2)
    assert "underexposure" in [finding.category for finding in detect_defects(dark)]


def test_4000_by_3000_upscale_is_flagged_like_each_detector_flags_it() -> None:
    large = photo("coffee").resize((4000, 3000), Image.Resampling.BICUBIC)
    findings = detect_defects(large)
    assert [finding.category for finding in findings] == ["low_resolution"]
    assert findings == [finding for finding in (detector(large) for detector in DETECTORS.values()) if finding]


@pytest.mark.filterwarnings("error")
def test_tiny_image_is_low_resolution_at_full_severity() -> None:
    findings = {finding.category: finding for finding in detect_defects(photo("rocket").resize((5, 3)))}
    assert findings["low_resolution"] == Finding("low_resolution", 1.0, "short side 3 px (low resolution below 256)")


@pytest.mark.filterwarnings("error")
def test_uniform_grey_image_is_only_blurry_and_flat() -> None:
    uniform = Image.new("RGB", (600, 400), (128, 128, 128))
    assert sorted(finding.category for finding in detect_defects(uniform)) == ["blur", "low_contrast"]
