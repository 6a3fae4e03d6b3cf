"""Image defect detectors that say why a low-scoring image looks bad, each with the measured figure as evidence."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color

# Scale-free measures (blur, exposure, contrast, colour) run on a copy whose longest side is at most this.
WORKING_SIDE = 512
# Pixel-level measures (noise, JPEG blocks, upscaling) run on a full-resolution centre crop of this side.
CROP_SIDE = 512
JPEG_BLOCK = 8

# blur: variance of the Laplacian of grey levels 0..255 on the downscaled copy.
BLUR_MIN_LAPLACIAN_VARIANCE = 100.0
BLUR_EXTREME_LAPLACIAN_VARIANCE = 10.0

# underexposure: mean luminance 0..1.
UNDEREXPOSED_MAX_MEAN_LUMINANCE = 0.15
UNDEREXPOSED_EXTREME_MEAN_LUMINANCE = 0.03

# overexposure: share of pixels whose luminance is at least NEAR_WHITE_LUMINANCE (blown highlights).
NEAR_WHITE_LUMINANCE = 0.9
OVEREXPOSED_MAX_NEAR_WHITE_SHARE = 0.15
OVEREXPOSED_EXTREME_NEAR_WHITE_SHARE = 0.75

# low_contrast: spread between the 1st and 99th luminance percentiles, 0..1.
LOW_CONTRAST_MIN_SPREAD = 0.4
LOW_CONTRAST_EXTREME_SPREAD = 0.05

# noise: estimated standard deviation of Gaussian noise in grey levels 0..255.
NOISE_MAX_SIGMA = 6.0
NOISE_EXTREME_SIGMA = 25.0
# Median absolute deviation of a standard normal variable, turning a MAD into a standard deviation.
NORMAL_MAD = 0.6745

# colour_cast: Lab chroma (a*, b* distance from neutral) of the mean colour of the brightest pixels.
HIGHLIGHT_PERCENTILE = 95
COLOUR_CAST_MAX_CHROMA = 25.0
COLOUR_CAST_EXTREME_CHROMA = 60.0

# compression: mean grey step across the 8-px JPEG grid over the mean step inside blocks.
BLOCKINESS_MAX_RATIO = 1.4
BLOCKINESS_EXTREME_RATIO = 4.0
# Grey levels added to both steps so a flat crop reads 1 instead of 0/0.
STEP_FLOOR = 0.5

# low_resolution: the short side in pixels, and for larger images the share of grey variance that a
# halve-then-double round trip loses (an upscaled image has almost no detail at its own pixel scale).
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


def _downscaled(image: Image.Image) -> Image.Image:
    """RGB image whose longest side is at most WORKING_SIDE, so scale-free measures cost the same at any size."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    scale = WORKING_SIDE / max(rgb.size)
    if scale >= 1:
        return rgb
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _downscaled_rgb(image: Image.Image) -> np.ndarray:
    """RGB pixels of the downscaled image."""
    return np.asarray(_downscaled(image))


def _downscaled_grey(image: Image.Image) -> np.ndarray:
    """Luminance 0..1 of the downscaled image."""
    return color.rgb2gray(_downscaled_rgb(image))


def _centre_crop_grey(image: Image.Image) -> np.ndarray:
    """Luminance 0..255 of a full-resolution centre crop whose corner sits on the JPEG block grid."""
    width, height = image.size
    left = (max(0, width - CROP_SIDE) // 2) // JPEG_BLOCK * JPEG_BLOCK
    top = (max(0, height - CROP_SIDE) // 2) // JPEG_BLOCK * JPEG_BLOCK
    crop = image.crop((left, top, min(width, left + CROP_SIDE), min(height, top + CROP_SIDE)))
    return color.rgb2gray(np.asarray(crop.convert("RGB"))) * 255


def detect_blur(image: Image.Image) -> Finding | None:
    """Blur: sharp edges give a widely spread Laplacian, so a low Laplacian variance means few edges."""
    variance = float(ndimage.laplace(_downscaled_grey(image) * 255).var())
    if variance >= BLUR_MIN_LAPLACIAN_VARIANCE:
        return None
    return Finding(
        "blur",
        _severity(variance, BLUR_MIN_LAPLACIAN_VARIANCE, BLUR_EXTREME_LAPLACIAN_VARIANCE),
        f"variance of Laplacian {variance:.1f} (blurry below {BLUR_MIN_LAPLACIAN_VARIANCE:g})",
    )


def detect_underexposure(image: Image.Image) -> Finding | None:
    """Underexposure: a mean luminance this low leaves most of the picture in shadow."""
    mean = float(_downscaled_grey(image).mean())
    if mean >= UNDEREXPOSED_MAX_MEAN_LUMINANCE:
        return None
    return Finding(
        "underexposure",
        _severity(mean, UNDEREXPOSED_MAX_MEAN_LUMINANCE, UNDEREXPOSED_EXTREME_MEAN_LUMINANCE),
        f"mean luminance {mean:.3f} (underexposed below {UNDEREXPOSED_MAX_MEAN_LUMINANCE:g})",
    )


def detect_overexposure(image: Image.Image) -> Finding | None:
    """Overexposure: a large share of near-white pixels means blown highlights with no detail left."""
    share = float((_downscaled_grey(image) >= NEAR_WHITE_LUMINANCE).mean())
    if share <= OVEREXPOSED_MAX_NEAR_WHITE_SHARE:
        return None
    return Finding(
        "overexposure",
        _severity(share, OVEREXPOSED_MAX_NEAR_WHITE_SHARE, OVEREXPOSED_EXTREME_NEAR_WHITE_SHARE),
        f"{share:.1%} of pixels near white (overexposed above {OVEREXPOSED_MAX_NEAR_WHITE_SHARE:.0%})",
    )


def detect_low_contrast(image: Image.Image) -> Finding | None:
    """Low contrast: a narrow luminance range between the 1st and 99th percentiles looks flat and washed out."""
    darkest, brightest = np.percentile(_downscaled_grey(image), [1, 99])
    spread = float(brightest - darkest)
    if spread >= LOW_CONTRAST_MIN_SPREAD:
        return None
    return Finding(
        "low_contrast",
        _severity(spread, LOW_CONTRAST_MIN_SPREAD, LOW_CONTRAST_EXTREME_SPREAD),
        f"luminance 1st-99th percentile spread {spread:.3f} (low contrast below {LOW_CONTRAST_MIN_SPREAD:g})",
    )


def detect_noise(image: Image.Image) -> Finding | None:
    """Noise: the median finest-scale diagonal Haar detail is mostly noise (Donoho's MAD estimate of sigma)."""
    grey = _centre_crop_grey(image)
    height, width = grey.shape
    if min(height, width) < 2:
        return None
    even = grey[: height - height % 2, : width - width % 2]
    diagonal = (even[0::2, 0::2] - even[0::2, 1::2] - even[1::2, 0::2] + even[1::2, 1::2]) / 2
    sigma = float(np.median(np.abs(diagonal)) / NORMAL_MAD)
    if sigma <= NOISE_MAX_SIGMA:
        return None
    return Finding(
        "noise",
        _severity(sigma, NOISE_MAX_SIGMA, NOISE_EXTREME_SIGMA),
        f"estimated noise sigma {sigma:.1f} grey levels (noisy above {NOISE_MAX_SIGMA:g})",
    )


def detect_colour_cast(image: Image.Image) -> Finding | None:
    """Colour cast: highlights should be near neutral, so their mean Lab chroma measures a tint of the whole image."""
    lab = color.rgb2lab(_downscaled_rgb(image))
    lightness = lab[..., 0]
    highlights = lab[lightness >= np.percentile(lightness, HIGHLIGHT_PERCENTILE)]
    chroma = float(np.hypot(highlights[:, 1].mean(), highlights[:, 2].mean()))
    if chroma <= COLOUR_CAST_MAX_CHROMA:
        return None
    return Finding(
        "colour_cast",
        _severity(chroma, COLOUR_CAST_MAX_CHROMA, COLOUR_CAST_EXTREME_CHROMA),
        f"highlight chroma {chroma:.1f} from neutral in Lab (colour cast above {COLOUR_CAST_MAX_CHROMA:g})",
    )


def detect_compression(image: Image.Image) -> Finding | None:
    """JPEG compression: heavy quantisation leaves grey steps on the 8-px block grid larger than those inside blocks."""
    grey = _centre_crop_grey(image)
    if min(grey.shape) <= JPEG_BLOCK:
        return None
    across_grid, inside_blocks = [], []
    for steps in (np.abs(np.diff(grey, axis=1)).mean(axis=0), np.abs(np.diff(grey, axis=0)).mean(axis=1)):
        on_grid = np.arange(steps.size) % JPEG_BLOCK == JPEG_BLOCK - 1
        across_grid.append(steps[on_grid])
        inside_blocks.append(steps[~on_grid])
    ratio = float(
        (np.concatenate(across_grid).mean() + STEP_FLOOR) / (np.concatenate(inside_blocks).mean() + STEP_FLOOR)
    )
    if ratio <= BLOCKINESS_MAX_RATIO:
        return None
    return Finding(
        "compression",
        _severity(ratio, BLOCKINESS_MAX_RATIO, BLOCKINESS_EXTREME_RATIO),
        f"step across 8-px grid {ratio:.2f}x the step inside blocks (blocky above {BLOCKINESS_MAX_RATIO:g}x)",
    )


def detect_low_resolution(image: Image.Image) -> Finding | None:
    """Low resolution: too few pixels, or an upscaled image that loses almost nothing when halved and doubled."""
    short_side = min(image.size)
    if short_side < MIN_SHORT_SIDE:
        return Finding(
            "low_resolution",
            _severity(short_side, MIN_SHORT_SIDE, EXTREME_SHORT_SIDE),
            f"short side {short_side} px (low resolution below {MIN_SHORT_SIDE})",
        )
    grey = _centre_crop_grey(image).astype(np.float32)
    variance = float(grey.var())
    if variance == 0:
        return None
    height, width = grey.shape
    halved = Image.fromarray(grey).resize((width // 2, height // 2), Image.Resampling.LANCZOS)
    round_trip = np.asarray(halved.resize((width, height), Image.Resampling.BICUBIC))
    detail_share = float(np.mean((grey - round_trip) ** 2)) / variance
    if detail_share >= UPSCALED_MAX_DETAIL_SHARE:
        return None
    return Finding(
        "low_resolution",
        _severity(detail_share, UPSCALED_MAX_DETAIL_SHARE, UPSCALED_EXTREME_DETAIL_SHARE),
        f"halving loses {detail_share:.3%} of grey variance (upscaled below {UPSCALED_MAX_DETAIL_SHARE:.1%})",
    )


DETECTORS: dict[str, Callable[[Image.Image], Finding | None]] = {
    "blur": detect_blur,
    "underexposure": detect_underexposure,
    "overexposure": detect_overexposure,
    "low_contrast": detect_low_contrast,
    "noise": detect_noise,
    "colour_cast": detect_colour_cast,
    "compression": detect_compression,
    "low_resolution": detect_low_resolution,
}

# Detectors that need full-resolution pixels; the others read the same figure from the downscaled image.
FULL_RESOLUTION_CATEGORIES = frozenset({"noise", "compression", "low_resolution"})


def detect_defects(image: Image.Image, categories: Iterable[str] | None = None) -> list[Finding]:
    """Run all detectors, or the named ones, downscaling once for those that allow it; return the defects found."""
    names = list(DETECTORS) if categories is None else list(categories)
    unknown = [name for name in names if name not in DETECTORS]
    if unknown:
        raise ValueError(f"unknown defect categories {unknown}; known: {', '.join(DETECTORS)}")
    downscaled = _downscaled(image)
    findings = (DETECTORS[name](image if name in FULL_RESOLUTION_CATEGORIES else downscaled) for name in names)
    return [finding for finding in findings if finding is not None]
