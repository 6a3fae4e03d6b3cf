"""Defect detectors on real photographs, clean and with each defect made by a real image operation, and their
agreement with the technical score, whose measurements they share."""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial

import numpy as np
import pytest
import sqlalchemy as sa
from PIL import Image, ImageEnhance, ImageFilter

from aesq.analysis import defect_analysis
from aesq.analysis.defects import (
    BLOCKINESS_MAX_RATIO,
    BLUR_MAX_SHARPNESS,
    COMPRESSION_MIN_QUALITY,
    DETECTORS,
    NOISE_MAX_SIGMA,
    OVEREXPOSED_MAX_HIGHLIGHT_SHARE,
    OVEREXPOSED_MAX_MEAN_LUMA,
    UNDEREXPOSED_MAX_MEAN_LUMA,
    Finding,
    detect_defects,
)
from aesq.core import scoring
from aesq.core.database import get_engine
from aesq.models.base import Score
from aesq.models.measurements import Measurements
from aesq.models.technical import TechnicalQualityScorer
from tests.helpers import ingest_all, jpeg_bytes, photo, put

CLEAN_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry"]


def _detect(category: str, image: Image.Image) -> Finding | None:
    """One detector's finding on the image, measured on its own."""
    return DETECTORS[category](Measurements(image))


def _reopened_jpeg(image: Image.Image, quality: int) -> Image.Image:
    """The image after a JPEG save and reload."""
    return Image.open(io.BytesIO(jpeg_bytes(image, quality)))


def _with_noise(image: Image.Image, sigma: float) -> Image.Image:
    """The image with additive Gaussian noise of this standard deviation in grey levels."""
    pixels = np.asarray(image).astype(float)
    noisy = pixels + np.random.default_rng(0).normal(0, sigma, pixels.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _blurred(image: Image.Image, radius: float) -> Image.Image:
    """The image under a Gaussian blur of this radius."""
    return image.filter(ImageFilter.GaussianBlur(radius))


def _brightened(image: Image.Image, factor: float) -> Image.Image:
    """The image with every value times this factor."""
    return ImageEnhance.Brightness(image).enhance(factor)


def _warm_tinted(image: Image.Image) -> Image.Image:
    """The image under an orange tint: red lifted, blue cut."""
    tinted = np.asarray(image).astype(float) * [1.0, 0.85, 0.6] + [30, 0, 0]
    return Image.fromarray(np.clip(tinted, 0, 255).astype(np.uint8))


def _upscaled(image: Image.Image, factor: int = 4) -> Image.Image:
    """The image shrunk by factor and enlarged back to its size."""
    small = image.resize((image.width // factor, image.height // factor), Image.Resampling.BICUBIC)
    return small.resize(image.size, Image.Resampling.BICUBIC)


DEFECTS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "gaussian blur": ("blur", partial(_blurred, radius=4)),
    "darkened": ("underexposure", partial(_brightened, factor=0.2)),
    "brightened": ("overexposure", partial(_brightened, factor=3)),
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
    finding = _detect(category, make_defect(photo(name)))
    assert finding is not None
    assert finding.category == category
    assert 0 < finding.severity <= 1
    assert finding.detail


@pytest.mark.parametrize("name", CLEAN_PHOTOS)
@pytest.mark.parametrize("category", DETECTORS)
def test_clean_photo_is_not_flagged(category: str, name: str) -> None:
    assert _detect(category, photo(name)) is None


@pytest.mark.parametrize("name", CLEAN_PHOTOS)
def test_clean_photos_have_no_findings(name: str) -> None:
    assert detect_defects(photo(name)) == []


@pytest.mark.parametrize("name", CLEAN_PHOTOS)
def test_high_quality_jpeg_has_no_findings(name: str) -> None:
    assert detect_defects(_reopened_jpeg(photo(name), 95)) == []


@pytest.mark.parametrize(
    ("category", "make_defect", "mild", "strong"),
    [
        ("blur", _blurred, 1.5, 4),
        ("underexposure", _brightened, 0.3, 0.1),
        ("noise", _with_noise, 12, 30),
        ("compression", _reopened_jpeg, 15, 3),
    ],
    ids=["blur", "underexposure", "noise", "compression"],
)
def test_stronger_defect_has_higher_severity(
    category: str, make_defect: Callable[[Image.Image, float], Image.Image], mild: float, strong: float
) -> None:
    clean = photo("coffee")
    mild_finding = _detect(category, make_defect(clean, mild))
    strong_finding = _detect(category, make_defect(clean, strong))
    assert mild_finding is not None and strong_finding is not None
    assert mild_finding.severity < strong_finding.severity


def test_detail_carries_the_measured_figure() -> None:
    finding = _detect("blur", _blurred(photo("astronaut"), 4))
    assert finding is not None
    assert finding.detail == "Laplacian spread 1.1 grey levels (blurry below 10)"


def test_compression_is_found_by_the_estimated_jpeg_quality() -> None:
    """Quality 40 shows block steps just under the blocky threshold; its estimated quality finds it anyway.
    Quality 90 and 60 are not defects."""
    clean = photo("coffee")
    assert _detect("compression", _reopened_jpeg(clean, 90)) is None
    assert _detect("compression", _reopened_jpeg(clean, 60)) is None
    finding = _detect("compression", _reopened_jpeg(clean, 40))
    assert finding is not None and 0 < finding.severity < 0.5
    assert finding.detail.startswith("JPEG quality about 39, step across 8-px grid 1.39x")


def test_pixel_blocks_count_as_one_pixel_for_low_resolution() -> None:
    """A 64-px thumbnail enlarged 8x by nearest neighbour to 512 px is as low in resolution as the thumbnail."""
    thumbnail = photo("astronaut").resize((64, 64), Image.Resampling.BOX)
    enlarged = _detect("low_resolution", thumbnail.resize((512, 512), Image.Resampling.NEAREST))
    small = _detect("low_resolution", thumbnail)
    assert enlarged is not None and small is not None
    assert enlarged.severity == small.severity
    assert enlarged.detail == "short side 512 px in 8.0-px blocks, 64 px of detail (low resolution below 256)"
    assert _detect("low_resolution", photo("astronaut")) is None


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
    assert findings == [finding for finding in (_detect(category, large) for category in DETECTORS) if finding]


@pytest.mark.filterwarnings("error")
def test_tiny_image_is_low_resolution_at_full_severity() -> None:
    findings = {finding.category: finding for finding in detect_defects(photo("rocket").resize((5, 3)))}
    assert findings["low_resolution"] == Finding("low_resolution", 1.0, "short side 3 px (low resolution below 256)")


@pytest.mark.filterwarnings("error")
def test_uniform_grey_image_is_only_blurry_and_flat() -> None:
    uniform = Image.new("RGB", (600, 400), (128, 128, 128))
    assert sorted(finding.category for finding in detect_defects(uniform)) == ["blur", "low_contrast"]


# The detectors and the technical scorer read the same measurements: on real photographs under graded
# distortions, a detector fires exactly where the figure in the technical score's `raw` crosses its threshold.
AGREEMENT_PHOTOS = [*CLEAN_PHOTOS, "camera", "moon", "coins", "retina"]
GRADES: dict[str, Callable[[Image.Image], Image.Image]] = {
    "clean": Image.Image.copy,
    **{f"blur {r}": partial(_blurred, radius=r) for r in (0.5, 1, 1.5, 2, 3, 4)},
    **{f"noise {s}": partial(_with_noise, sigma=s) for s in (3, 6, 9, 12, 20, 30, 60)},
    **{f"jpeg {q}": partial(_reopened_jpeg, quality=q) for q in (75, 40, 20, 10, 5, 3)},
    **{f"brightness {f}": partial(_brightened, factor=f) for f in (0.1, 0.2, 0.4, 1.6, 3)},
}
# Per shared category: whether the technical score's raw figures make it a defect, and the detail's figure.
SHARED_RULES: dict[str, tuple[Callable[[dict[str, float]], bool], str]] = {
    "blur": (lambda raw: raw["sharpness_lap_std"] < BLUR_MAX_SHARPNESS, "{sharpness_lap_std:.1f}"),
    "noise": (lambda raw: raw["noise_sigma"] > NOISE_MAX_SIGMA, "{noise_sigma:.1f}"),
    "compression": (
        lambda raw: raw["blockiness_ratio"] > BLOCKINESS_MAX_RATIO or raw["jpeg_quality"] < COMPRESSION_MIN_QUALITY,
        "JPEG quality about {jpeg_quality:.0f}, step across 8-px grid {blockiness_ratio:.2f}x",
    ),
    "underexposure": (lambda raw: raw["exposure_mean"] < UNDEREXPOSED_MAX_MEAN_LUMA, "{exposure_mean:.3f}"),
    "overexposure": (
        lambda raw: (
            raw["clipped_highlights"] > OVEREXPOSED_MAX_HIGHLIGHT_SHARE
            or raw["exposure_mean"] > OVEREXPOSED_MAX_MEAN_LUMA
        ),
        "{clipped_highlights:.1%} of pixels blown to white, mean luminance {exposure_mean:.3f}",
    ),
}
# Where a detector's severity reaches 1, the technical sub-score of the same figure reaches 0.
SUB_SCORES = {"blur": "sharpness_score", "noise": "noise_score", "compression": "blockiness_score"}


@pytest.fixture(scope="module")
def judged() -> dict[tuple[str, str], tuple[Score, dict[str, Finding]]]:
    """Per (photo, grade): the technical score and the defect findings by category, of the same image."""
    scorer = TechnicalQualityScorer()
    result = {}
    for name in AGREEMENT_PHOTOS:
        clean = photo(name)
        for grade, make in GRADES.items():
            image = make(clean)
            (score,) = scorer.score([image])
            result[name, grade] = score, {finding.category: finding for finding in detect_defects(image)}
    return result


@pytest.mark.parametrize("category", SHARED_RULES)
def test_detector_fires_exactly_where_the_technical_figure_crosses_its_threshold(
    category: str, judged: dict[tuple[str, str], tuple[Score, dict[str, Finding]]]
) -> None:
    is_defect, figure = SHARED_RULES[category]
    disagreements = [key for key, (score, found) in judged.items() if (category in found) != is_defect(score.raw)]
    assert disagreements == []
    flagged = [found[category] for score, found in judged.values() if category in found]
    assert 5 <= len(flagged) <= len(judged) - 5, "the graded images must fall on both sides of the threshold"
    for score, found in judged.values():
        if category in found:
            assert figure.format(**score.raw) in found[category].detail


@pytest.mark.parametrize("category", SUB_SCORES)
def test_full_severity_exactly_where_the_technical_sub_score_is_zero(
    category: str, judged: dict[tuple[str, str], tuple[Score, dict[str, Finding]]]
) -> None:
    full = {key for key, (_, found) in judged.items() if category in found and found[category].severity == 1.0}
    zero = {key for key, (score, _) in judged.items() if score.raw[SUB_SCORES[category]] == 0.0}
    assert full == zero
    assert full, "some graded image must reach full severity"


def test_stored_defects_and_technical_scores_agree_through_the_pipeline(settings, s3_client, bucket) -> None:
    """Scored and analysed as aesq does (each fetching and decoding the object itself, a large one reduced), every
    stored defect of a shared category matches the stored technical score's raw figures, and its detail shows them."""
    large = photo("coffee").resize((3000, 2200), Image.Resampling.BICUBIC)
    objects = {
        "large-blurred-noisy.jpg": jpeg_bytes(_with_noise(_blurred(large, 6), 20)),
        "dark.jpg": jpeg_bytes(_brightened(photo("astronaut"), 0.1)),
        "blocky.jpg": jpeg_bytes(photo("rocket"), 5),
        "clean.jpg": jpeg_bytes(photo("chelsea")),
    }
    for key, payload in objects.items():
        put(s3_client, bucket, f"generated/sdxl/1.0/{key}", payload)
    ids = ingest_all(f"s3://{bucket}/", settings)
    assert scoring.score_assets(ids, settings).scored == len(objects)
    defect_analysis.analyse_assets(ids, settings)
    with get_engine(settings).connect() as connection:
        query = "SELECT a.key, s.raw FROM scores s JOIN assets a ON a.id = s.asset_id WHERE s.scorer = 'technical'"
        raw = dict(connection.execute(sa.text(query)).all())
        rows = connection.execute(
            sa.text("SELECT a.key, d.category, d.detail FROM defects d JOIN assets a ON a.id = d.asset_id")
        ).all()
    large_key = "generated/sdxl/1.0/large-blurred-noisy.jpg"
    assert raw[large_key]["megapixels"] == 3000 * 2200 / 1e6  # its native size, though decoded reduced
    found: dict[str, dict[str, str]] = {key: {} for key in raw}
    for key, category, detail in rows:
        found[key][category] = detail
    for key, figures in raw.items():
        for category, (is_defect, figure) in SHARED_RULES.items():
            assert (category in found[key]) == is_defect(figures), (key, category, figures)
            if category in found[key]:
                assert figure.format(**figures) in found[key][category], (key, category)
    flagged = {key.rsplit("/", 1)[1]: set(found[key]) & set(SHARED_RULES) for key in found}
    assert flagged == {
        "large-blurred-noisy.jpg": {"blur", "noise"},
        "dark.jpg": {"underexposure", "blur"},  # a tenth of the light leaves a tenth of the edge contrast
        "blocky.jpg": {"compression"},
        "clean.jpg": set(),
    }
