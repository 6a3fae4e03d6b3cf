"""Image defect detectors that say why a low-scoring image looks bad, each with the measured figure as evidence."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from aesq.models.measurements import Measurements

# Each detector compares one figure of `aesq.models.measurements.Measurements`, the figure the technical
# scorer reads too, with a threshold; its severity runs from 0 at the threshold to 1 at the extreme. Where
# the technical score has a sub-score for the figure, the extreme is where that sub-score reaches 0.

# blur: grain-compensated Laplacian standard deviation of the working copy, 8-bit units (technical
# `sharpness_lap_std`; its sub-score is 0.75 at the threshold and 0 at the extreme).
BLUR_MAX_SHARPNESS = 10.0
BLUR_EXTREME_SHARPNESS = 1.0

# underexposure: mean luma 0..1 (technical `exposure_mean`; its exposure sub-score is 0.6 at the threshold).
UNDEREXPOSED_MAX_MEAN_LUMA = 0.15
UNDEREXPOSED_EXTREME_MEAN_LUMA = 0.0

# overexposure: share of blown-highlight pixels (technical `clipped_highlights`; the clipping sub-score, which
# adds half the crushed shadows to it, starts to fall at the threshold and reaches 0 at the extreme), or a
# washed-out mean luma (technical `exposure_mean`, the mirror of underexposure; its exposure sub-score is 0.5
# at the threshold).
OVEREXPOSED_MAX_HIGHLIGHT_SHARE = 0.05
OVEREXPOSED_EXTREME_HIGHLIGHT_SHARE = 0.50
OVEREXPOSED_MAX_MEAN_LUMA = 0.85
OVEREXPOSED_EXTREME_MEAN_LUMA = 1.0

# low_contrast: spread between the 1st and 99th luma percentiles, 0..1 (its lower end is technical `black_level`).
LOW_CONTRAST_MIN_SPREAD = 0.4
LOW_CONTRAST_EXTREME_SPREAD = 0.05

# noise: standard deviation of Gaussian noise at the image's own pixel grid, 8-bit units (technical `noise_sigma`;
# its sub-score is 0.6 at the threshold and 0 at the extreme).
NOISE_MAX_SIGMA = 6.0
NOISE_EXTREME_SIGMA = 32.0

# colour_cast: Lab chroma (a*, b* distance from neutral) of the mean colour of the brightest pixels.
COLOUR_CAST_MAX_CHROMA = 25.0
COLOUR_CAST_EXTREME_CHROMA = 60.0

# compression: luma step across the 8-px JPEG grid over the step inside blocks at the native pixel grid
# (technical `blockiness_ratio`; its part of the blockiness sub-score is 0.89 at the threshold and 0 at the
# extreme), or the estimated quality of the last JPEG compression (technical `jpeg_quality`; its part is 0.53 at
# the threshold and 0 at the extreme).
BLOCKINESS_MAX_RATIO = 1.4
BLOCKINESS_EXTREME_RATIO = 3.0
COMPRESSION_MIN_QUALITY = 50.0
COMPRESSION_EXTREME_QUALITY = 0.0

# low_resolution: the native short side in pixels over the side of the pixel blocks of a nearest-neighbour
# upscale (technical `block_side`), and for larger images the share of luma variance that a halve-then-double
# round trip loses (an upscaled image has almost no detail at its own pixel scale).
MIN_SHORT_SIDE = 256
EXTREME_SHORT_SIDE = 32
UPSCALED_MAX_DETAIL_SHARE = 0.002
UPSCALED_EXTREME_DETAIL_SHARE = 0.0


@dataclass(frozen=True)
class Finding:
    """One defect found on an image."""

    category: str
    severity: float
    detail: str


def _severity(value: float, threshold: float, extreme: float) -> float:
    """Position of a measured value from the threshold (0) to the extreme (1), clipped."""
    return float(np.clip((value - threshold) / (extreme - threshold), 0.0, 1.0))


def detect_blur(measured: Measurements) -> Finding | None:
    """Blur: sharp edges give a widely spread Laplacian, so a low Laplacian spread (beyond noise) means few edges."""
    sharpness = measured.sharpness_lap_std
    if sharpness >= BLUR_MAX_SHARPNESS:
        return None
    return Finding(
        "blur",
        _severity(sharpness, BLUR_MAX_SHARPNESS, BLUR_EXTREME_SHARPNESS),
        f"Laplacian spread {sharpness:.1f} grey levels (blurry below {BLUR_MAX_SHARPNESS:g})",
    )


def detect_underexposure(measured: Measurements) -> Finding | None:
    """Underexposure: a mean luma this low leaves most of the picture in shadow."""
    mean = measured.exposure_mean
    if mean >= UNDEREXPOSED_MAX_MEAN_LUMA:
        return None
    return Finding(
        "underexposure",
        _severity(mean, UNDEREXPOSED_MAX_MEAN_LUMA, UNDEREXPOSED_EXTREME_MEAN_LUMA),
        f"mean luminance {mean:.3f} (underexposed below {UNDEREXPOSED_MAX_MEAN_LUMA:g})",
    )


def detect_overexposure(measured: Measurements) -> Finding | None:
    """Overexposure: many blown-highlight pixels (no detail left there), or a frame washed out as a whole."""
    share, mean = measured.clipped_highlights, measured.exposure_mean
    if share <= OVEREXPOSED_MAX_HIGHLIGHT_SHARE and mean <= OVEREXPOSED_MAX_MEAN_LUMA:
        return None
    return Finding(
        "overexposure",
        max(
            _severity(share, OVEREXPOSED_MAX_HIGHLIGHT_SHARE, OVEREXPOSED_EXTREME_HIGHLIGHT_SHARE),
            _severity(mean, OVEREXPOSED_MAX_MEAN_LUMA, OVEREXPOSED_EXTREME_MEAN_LUMA),
        ),
        f"{share:.1%} of pixels blown to white, mean luminance {mean:.3f} "
        f"(overexposed above {OVEREXPOSED_MAX_HIGHLIGHT_SHARE:.0%} blown or mean {OVEREXPOSED_MAX_MEAN_LUMA:g})",
    )


def detect_low_contrast(measured: Measurements) -> Finding | None:
    """Low contrast: a narrow luma range between the 1st and 99th percentiles looks flat and washed out."""
    spread = measured.tonal_range
    if spread >= LOW_CONTRAST_MIN_SPREAD:
        return None
    return Finding(
        "low_contrast",
        _severity(spread, LOW_CONTRAST_MIN_SPREAD, LOW_CONTRAST_EXTREME_SPREAD),
        f"luminance 1st-99th percentile spread {spread:.3f} (low contrast below {LOW_CONTRAST_MIN_SPREAD:g})",
    )


def detect_noise(measured: Measurements) -> Finding | None:
    """Noise: grain at the image's own pixel grid, Immerkaer's estimate on its calmer half (edges and texture
    left out)."""
    sigma = measured.noise_sigma
    if sigma <= NOISE_MAX_SIGMA:
        return None
    return Finding(
        "noise",
        _severity(sigma, NOISE_MAX_SIGMA, NOISE_EXTREME_SIGMA),
        f"estimated noise sigma {sigma:.1f} grey levels (noisy above {NOISE_MAX_SIGMA:g})",
    )


def detect_colour_cast(measured: Measurements) -> Finding | None:
    """Colour cast: highlights should be near neutral, so their mean Lab chroma measures a tint of the whole image."""
    chroma = measured.highlight_chroma
    if chroma <= COLOUR_CAST_MAX_CHROMA:
        return None
    return Finding(
        "colour_cast",
        _severity(chroma, COLOUR_CAST_MAX_CHROMA, COLOUR_CAST_EXTREME_CHROMA),
        f"highlight chroma {chroma:.1f} from neutral in Lab (colour cast above {COLOUR_CAST_MAX_CHROMA:g})",
    )


def detect_compression(measured: Measurements) -> Finding | None:
    """JPEG compression: coarse quantisation (a low estimated quality) blurs and rings, and at its worst leaves
    luma steps on the 8-px block grid larger than those inside."""
    ratio, quality = measured.blockiness_ratio, measured.jpeg_quality
    if ratio <= BLOCKINESS_MAX_RATIO and quality >= COMPRESSION_MIN_QUALITY:
        return None
    return Finding(
        "compression",
        max(
            _severity(ratio, BLOCKINESS_MAX_RATIO, BLOCKINESS_EXTREME_RATIO),
            _severity(quality, COMPRESSION_MIN_QUALITY, COMPRESSION_EXTREME_QUALITY),
        ),
        f"JPEG quality about {quality:.0f}, step across 8-px grid {ratio:.2f}x the step inside blocks "
        f"(compressed below quality {COMPRESSION_MIN_QUALITY:g} or above {BLOCKINESS_MAX_RATIO:g}x)",
    )


def detect_low_resolution(measured: Measurements) -> Finding | None:
    """Low resolution: too few pixels (counting each pixel block of a nearest-neighbour upscale as one), or an
    upscaled image that loses almost nothing when halved and doubled."""
    short_side, block_side = measured.short_side, measured.block_side
    if short_side / block_side < MIN_SHORT_SIDE:
        blocks = (
            f" in {block_side:.1f}-px blocks, {int(short_side / block_side)} px of detail" if block_side > 1 else ""
        )
        return Finding(
            "low_resolution",
            _severity(short_side / block_side, MIN_SHORT_SIDE, EXTREME_SHORT_SIDE),
            f"short side {short_side} px{blocks} (low resolution below {MIN_SHORT_SIDE})",
        )
    detail_share = measured.fine_detail_share
    if detail_share >= UPSCALED_MAX_DETAIL_SHARE:
        return None
    return Finding(
        "low_resolution",
        _severity(detail_share, UPSCALED_MAX_DETAIL_SHARE, UPSCALED_EXTREME_DETAIL_SHARE),
        f"halving loses {detail_share:.3%} of grey variance (upscaled below {UPSCALED_MAX_DETAIL_SHARE:.1%})",
    )


DETECTORS: dict[str, Callable[[Measurements], Finding | None]] = {
    "blur": detect_blur,
    "underexposure": detect_underexposure,
    "overexposure": detect_overexposure,
    "low_contrast": detect_low_contrast,
    "noise": detect_noise,
    "colour_cast": detect_colour_cast,
    "compression": detect_compression,
    "low_resolution": detect_low_resolution,
}


def detect_defects(image: Image.Image, categories: Iterable[str] | None = None) -> list[Finding]:
    """Run all detectors, or the named ones, on one set of measurements of the image; return the defects found.

    The image is the decoded one the technical scorer receives (`aesq.core.fetch.fetch_asset`), so every
    figure is the one its score was computed from.
    """
    names = list(DETECTORS) if categories is None else list(categories)
    unknown = [name for name in names if name not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown defect categories {unknown}; known: {', '.join(DETECTORS)}")
    measured = Measurements(image)
    findings = (DETECTORS[name](measured) for name in names)
    return [finding for finding in findings if finding is not None]
