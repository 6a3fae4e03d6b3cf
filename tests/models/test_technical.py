"""The technical-quality baseline ranks real photographs above degraded copies of themselves."""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageFilter

from aesq.models.base import Score
from aesq.models.technical import WEIGHTS, TechnicalQualityScorer

# Real photographs bundled with scikit-image (no download); retina and hubble exceed 512 px.
PHOTOS = [
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "moon",
    "coins",
    "immunohistochemistry",
    "hubble_deep_field",
    "retina",
]
FEATURES = [*WEIGHTS, "resolution"]


def _photo(name: str) -> Image.Image:
    """A bundled scikit-image photograph as an RGB PIL image (grayscale ones converted)."""
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _blur(image: Image.Image) -> Image.Image:
    """Gaussian blur, radius 3."""
    return image.filter(ImageFilter.GaussianBlur(3))


def _noise(image: Image.Image) -> Image.Image:
    """Additive per-channel Gaussian noise, sigma 25 on 0-255, fixed seed."""
    rng = np.random.default_rng(0)
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 25.0, (image.height, image.width, 3))
    return Image.fromarray(np.clip(noisy + 0.5, 0, 255).astype(np.uint8))


def _under(image: Image.Image) -> Image.Image:
    """Under-exposure: every value times 0.25."""
    return image.point(lambda v: round(v * 0.25))


def _over(image: Image.Image) -> Image.Image:
    """Over-exposure: v * 2.5 + 60, clipped at 255."""
    return image.point(lambda v: min(255, round(v * 2.5 + 60)))


def _jpeg(image: Image.Image) -> Image.Image:
    """Heavy JPEG compression, quality 8."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=8)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _low_resolution(image: Image.Image) -> Image.Image:
    """Downscale 4x (bilinear), then upscale back to the original size (bicubic)."""
    small = image.resize((image.width // 4, image.height // 4), Image.Resampling.BILINEAR)
    return small.resize(image.size, Image.Resampling.BICUBIC)


DEGRADATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "blur": _blur,
    "noise": _noise,
    "under_exposure": _under,
    "over_exposure": _over,
    "jpeg": _jpeg,
    "low_resolution": _low_resolution,
}


@pytest.fixture(scope="module")
def scorer() -> TechnicalQualityScorer:
    """A ready scorer."""
    model = TechnicalQualityScorer()
    model.setup()
    return model


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    """The original photographs by name."""
    return {name: _photo(name) for name in PHOTOS}


@pytest.fixture(scope="module")
def scores(scorer: TechnicalQualityScorer, photos: dict[str, Image.Image]) -> dict[tuple[str, str], Score]:
    """Scores keyed by (photo, "original" or degradation)."""
    kinds = ["original", *DEGRADATIONS]
    result = {}
    for name, image in photos.items():
        batch = [image, *(degrade(image) for degrade in DEGRADATIONS.values())]
        result.update({(name, kind): s for kind, s in zip(kinds, scorer.score(batch), strict=True)})
    return result


@pytest.fixture(scope="module")
def pairs(scores: dict[tuple[str, str], Score]) -> list[tuple[str, str, float, float]]:
    """(photo, degradation, original value, degraded value) for every pair."""
    return [(n, k, scores[n, "original"].value, scores[n, k].value) for n in PHOTOS for k in DEGRADATIONS]


def _report(rows: list[tuple[str, str, float, float]]) -> str:
    """One line per pair where the original did not score higher."""
    return "\n".join(f"{n:22s} {k:15s} original {o:.2f} <= degraded {d:.2f}" for n, k, o, d in rows if o <= d)


def test_originals_beat_degraded_copies(pairs: list[tuple[str, str, float, float]]) -> None:
    """At least 90 % of (original, degraded) pairs rank the original higher."""
    share = sum(o > d for _, _, o, d in pairs) / len(pairs)
    failures = _report(pairs)
    print(f"\noriginal > degraded in {share:.1%} of {len(pairs)} pairs\n{failures}")
    assert len(pairs) == len(PHOTOS) * len(DEGRADATIONS)
    assert share >= 0.9, failures


@pytest.mark.parametrize("kind", list(DEGRADATIONS))
def test_each_degradation_is_mostly_detected(kind: str, pairs: list[tuple[str, str, float, float]]) -> None:
    """Per degradation, at least 80 % of photographs score higher than their degraded copy."""
    rows = [row for row in pairs if row[1] == kind]
    share = sum(o > d for _, _, o, d in rows) / len(rows)
    print(f"\n{kind}: {share:.0%}\n{_report(rows)}")
    assert share >= 0.8, _report(rows)


# The feature meant to catch each degradation; it must drop on every photo.
RESPONSIBLE = {
    "blur": "sharpness",
    "noise": "noise",
    "under_exposure": "exposure",
    "over_exposure": "black_level",
    "jpeg": "blockiness",
    "low_resolution": "sharpness",
}


@pytest.mark.parametrize("kind", list(DEGRADATIONS))
def test_responsible_feature_drops(kind: str, scores: dict[tuple[str, str], Score]) -> None:
    """Each degradation lowers the sub-score of the feature designed to catch it, on every photo."""
    key = f"{RESPONSIBLE[kind]}_score"
    for name in PHOTOS:
        assert scores[name, kind].raw[key] < scores[name, "original"].raw[key], (name, key)


# Photographs whose own pixels are already distorted, left out of the ladders below: scikit-image's moon is a
# nearest-neighbour 2x enlargement (any other distortion breaks its pixel blocks), coins a JPEG of about
# quality 85 (blurring it or saving it again changes that).
PRISTINE = [name for name in PHOTOS if name not in ("moon", "coins")]


def test_distorted_sources_are_read_as_such(scores: dict[tuple[str, str], Score]) -> None:
    """The moon photograph's pixel blocks and the coins photograph's JPEG quantisation are found in the files."""
    assert scores["moon", "original"].raw["block_side"] == 2.0
    assert scores["coins", "original"].raw["jpeg_quality"] == pytest.approx(85, abs=3)
    for name in PRISTINE:
        assert scores[name, "original"].raw["block_side"] == 1.0
        assert scores[name, "original"].raw["jpeg_quality"] == 100.0


def _jpeg_at(quality: int) -> Callable[[Image.Image], Image.Image]:
    """A JPEG save and reload at this quality."""

    def save(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return save


def _noise_at(sigma: float) -> Callable[[Image.Image], Image.Image]:
    """Additive per-channel Gaussian noise of this sigma, fixed seed."""

    def add(image: Image.Image) -> Image.Image:
        noise = np.random.default_rng(0).normal(0.0, sigma, (image.height, image.width, 3))
        return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).round().astype(np.uint8))

    return add


def _pixelated_at(factor: int) -> Callable[[Image.Image], Image.Image]:
    """Shrunk by this factor (box filter) and enlarged back by nearest neighbour: blocks of repeated pixels."""

    def pixelate(image: Image.Image) -> Image.Image:
        small = image.resize((image.width // factor, image.height // factor), Image.Resampling.BOX)
        return small.resize(image.size, Image.Resampling.NEAREST)

    return pixelate


LADDERS: dict[str, list[Callable[[Image.Image], Image.Image]]] = {
    # Down to quality 12: below it a smooth photograph (retina) keeps too few coefficients for the JPEG quality
    # estimate, and the block-step ratio, which scores it then, is already at its floor (BENCHMARKS.md).
    "jpeg": [_jpeg_at(quality) for quality in (90, 70, 45, 25, 12)],
    "noise": [_noise_at(sigma) for sigma in (3, 6, 10, 15, 22, 35)],
    "pixelation": [_pixelated_at(factor) for factor in (2, 3, 4, 6, 8)],
}


@pytest.mark.parametrize("kind", list(LADDERS))
def test_every_step_of_a_graded_distortion_lowers_the_score(
    kind: str, scorer: TechnicalQualityScorer, photos: dict[str, Image.Image]
) -> None:
    """On every pristine photograph, each step up a graded distortion (the benchmark's kinds, see
    bench/baseline_iqa.py) gives a strictly lower score than the step before."""
    for name in PRISTINE:
        image = photos[name]
        values = [score.value for score in scorer.score([image, *(step(image) for step in LADDERS[kind])])]
        assert all(a > b for a, b in itertools.pairwise(values)), (name, [round(v, 3) for v in values])


def test_enlarging_a_thumbnail_by_nearest_neighbour_does_not_rescue_it(
    scorer: TechnicalQualityScorer, photos: dict[str, Image.Image]
) -> None:
    """A 64-px thumbnail enlarged 8x by nearest neighbour holds the thumbnail's pixels and scores no better than
    the thumbnail, well below the photograph."""
    for name in ("astronaut", "camera"):
        thumbnail = photos[name].resize((64, 64), Image.Resampling.BOX)
        enlarged = thumbnail.resize((512, 512), Image.Resampling.NEAREST)
        original, small, large = scorer.score([photos[name], thumbnail, enlarged])
        assert large.raw["block_side"] == 8.0
        assert large.raw["effective_megapixels"] == small.raw["megapixels"]
        assert large.value <= small.value < 0.5 * original.value


def test_noise_is_not_mistaken_for_detail(scores: dict[tuple[str, str], Score]) -> None:
    """Noise-compensated sharpness barely moves under sigma-25 noise (uncompensated it would triple)."""
    ratios = [
        scores[n, "noise"].raw["sharpness_lap_std"] / scores[n, "original"].raw["sharpness_lap_std"] for n in PHOTOS
    ]
    assert max(ratios) < 1.6, ratios
    assert float(np.median(ratios)) < 1.2, ratios


def test_values_in_range_and_raw_complete(scorer: TechnicalQualityScorer, photos: dict[str, Image.Image]) -> None:
    """Values lie in [0, 10]; every feature has a finite raw measurement and a sub-score in [0, 1]."""
    for score in scorer.score(list(photos.values())):
        assert isinstance(score, Score)
        assert 0.0 <= score.value <= 10.0
        assert all(isinstance(v, float) and math.isfinite(v) for v in score.raw.values()), score.raw
        for feature in FEATURES:
            assert 0.0 <= score.raw[f"{feature}_score"] <= 1.0
        for key in (
            "sharpness_lap_std",
            "noise_sigma",
            "blockiness_ratio",
            "exposure_mean",
            "clipped_shadows",
            "clipped_highlights",
            "black_level",
            "contrast_rms",
            "colourfulness",
            "megapixels",
            "jpeg_quality",
            "block_side",
            "effective_megapixels",
        ):
            assert key in score.raw


def test_batch_equals_one_at_a_time(scorer: TechnicalQualityScorer, photos: dict[str, Image.Image]) -> None:
    """Scoring a batch gives exactly the scores of scoring each image alone, in order."""
    images = [photos["astronaut"], _blur(photos["coffee"]), photos["camera"], _jpeg(photos["retina"])]
    assert scorer.score(images) == [scorer.score([image])[0] for image in images]
    assert scorer.score([]) == []


def test_tiny_image_scores_lower(scorer: TechnicalQualityScorer, photos: dict[str, Image.Image]) -> None:
    """A 16x16 thumbnail of a photo scores well below the photo itself."""
    full = photos["chelsea"]
    tiny = full.resize((16, 16), Image.Resampling.BILINEAR)
    full_score, tiny_score = scorer.score([full, tiny])
    assert tiny_score.value < 0.5 * full_score.value
    assert tiny_score.raw["resolution_score"] < full_score.raw["resolution_score"]


def test_grayscale_photo_is_not_punished_to_zero(
    scorer: TechnicalQualityScorer, photos: dict[str, Image.Image]
) -> None:
    """A grayscale photo converted to RGB scores sanely and loses at most the colourfulness weight."""
    colour = photos["astronaut"]
    gray = colour.convert("L").convert("RGB")
    colour_score, gray_score = scorer.score([colour, gray])
    assert gray_score.raw["colourfulness"] == pytest.approx(0.0, abs=1e-6)
    assert gray_score.value > 5.0
    assert colour_score.value - gray_score.value <= 10 * WEIGHTS["colourfulness"] + 1e-6


@pytest.mark.parametrize("size", [(1, 1), (2, 3), (7, 5), (16, 16), (700, 9)])
@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P"])
def test_degenerate_inputs_stay_in_range(scorer: TechnicalQualityScorer, size: tuple[int, int], mode: str) -> None:
    """Tiny, thin, flat and non-RGB images still give a finite value in [0, 10]."""
    (score,) = scorer.score([Image.new(mode, size, 128)])
    assert 0.0 <= score.value <= 10.0
    assert all(math.isfinite(v) for v in score.raw.values())


def test_transparent_images_are_measured_as_shown_on_white(scorer: TechnicalQualityScorer) -> None:
    """aesq's own scorer judges what a viewer sees, as aesq shows it; the colours stored under transparent
    pixels (a whole photograph here) do not count."""
    from aesq.models.base import on_white
    from tests.helpers import transparent_sticker

    sticker = transparent_sticker()
    as_given, shown, stored = scorer.score([sticker, on_white(sticker), sticker.convert("RGB")])
    assert as_given == shown
    assert as_given.raw["clipped_highlights"] > stored.raw["clipped_highlights"] + 0.3


def test_registered_under_its_name() -> None:
    """The scorer is looked up as "technical"."""
    from aesq.models import SCORERS

    assert SCORERS["technical"] is TechnicalQualityScorer
    assert TechnicalQualityScorer.version == "2"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size"), [("camera", (6000, 4000)), ("astronaut", (4096, 3072)), ("coffee", (5000, 3500))]
)
def test_large_image_decoded_reduced_scores_as_at_full_size(
    scorer: TechnicalQualityScorer, name: str, size: tuple[int, int]
) -> None:
    """aesq decodes images over 2048x2048 reduced, passing their native centre and size along: noise,
    blockiness and resolution are measured exactly as on the full image, and the score barely moves."""
    from aesq.core.images import PixelBudget, decode_image

    stored = _noise(_photo(name).resize(size, Image.Resampling.BICUBIC))
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=60)
    full = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    reduced = decode_image(buffer.getvalue(), 64_000_000, PixelBudget(64_000_000))
    assert reduced.width < full.width
    at_full, decoded = scorer.score([full, reduced])
    for key in ("noise_sigma", "blockiness_ratio", "megapixels"):
        assert decoded.raw[key] == at_full.raw[key], key
    assert decoded.value == pytest.approx(at_full.value, abs=0.05)
