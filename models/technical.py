"""Weight-free technical-quality baseline: classic image statistics mapped to a 0-10 score.

Most features are measured on the 8-bit luminance (ITU-R 601 luma, PIL mode "L") of the image
shrunk so its long side is at most 512 px (never enlarged), i.e. on what a viewer sees at a
typical display size. Noise and JPEG blockiness live at the native pixel grid, which shrinking
averages away, so those two are measured on a central crop of at most 512x512 native pixels whose
corner sits on the 8x8 JPEG block grid. The cost is therefore bounded whatever the input size.

Images up to 2048x2048 pixels reach the scorer at full size. aesq decodes larger ones reduced by an
integer factor (box filter; see `aesq.core.images`) and passes their native centre crop and native size
along (`aesq.models.base.native_centre`, `native_size`), so noise, blockiness and resolution are measured
exactly as on the full image. The other features come from the 512-px working copy made from the
reduced image instead of the full one; the factor is chosen so that both reductions compose where it
can: on 60 test images (5 photographs at 2600x2000 to 7999x7999 pixels, 3 codings) the value moved
by at most 0.04 (mean 0.008) on the 0-10 scale.

Features, why each is there, and its sub-score (each in [0, 1], 1 = no problem):

* sharpness - out-of-focus, motion-blurred and upscaled images lose fine detail. Raw: standard
  deviation of the 4-neighbour Laplacian with the part explained by noise removed,
  ``sqrt(max(E[lap^2] - 20 * noise_sigma^2, 0))`` (20 = sum of the squared kernel taps), so that
  grain is not mistaken for detail. Sub-score rises log-linearly from 1 to 16 (8-bit units).
* noise - sensor grain and dithering. Raw: Immerkaer's (1996) fast noise sigma on the native crop.
  Sub-score falls linearly from sigma 2 to 12.
* exposure - under/over-exposed frames are dark or washed out. Raw: mean luma in [0, 1]. Sub-score
  is 1 on [0.25, 0.70], falling linearly to 0 at 0.0 and 1.0.
* clipping - blown highlights and crushed shadows lose detail for good. Raw: share of pixels with
  luma >= 253 (highlights) and <= 2 (shadows). Sub-score falls linearly as
  ``highlights + shadows / 2`` goes from 5 % to 50 %: black surrounds and night skies are often
  deliberate, blown skies rarely are.
* black level - a lifted black point (no true blacks) reads as haze, flare or over-exposure even
  when the mean looks fine. Raw: 1st-percentile luma in [0, 1]. Sub-score falls linearly from
  0.10 to 0.50.
* contrast - flat, foggy or under-exposed images have little tonal spread. Raw: RMS contrast
  (standard deviation of luma in [0, 1]) of a 4x box-reduced copy, so grain does not count as
  contrast. Sub-score rises linearly from 0 to 0.18.
* colourfulness - dull, washed-out colour. Raw: Hasler & Suesstrunk (2003) colourfulness M of the
  4x box-reduced copy (chroma noise averaged out). Sub-score rises linearly from 0 to 40. Weighted
  lightly, because grayscale photographs are legitimate.
* blockiness - heavy JPEG compression leaves steps at the 8x8 block borders. Raw: mean absolute
  luma step across block borders over the mean step inside blocks (about 1 when clean). Sub-score
  falls linearly from 1.2 to 2.5.
* resolution - a thumbnail is unusable however clean it is. Raw: native pixel count in megapixels.
  Factor rises log-linearly from 32x32 px (0) to 256x256 px (1).

Combination: a weighted mean of the first eight sub-scores, gated by the resolution factor::

    value = 10 * resolution * sum(w_i * s_i),   sum(w_i) = 1

    w: sharpness 0.25, noise 0.15, blockiness 0.15, exposure 0.10, clipping 0.10,
       black level 0.10, contrast 0.10, colourfulness 0.05

Resolution multiplies rather than averages so no amount of crispness rescues a thumbnail.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from PIL import Image
from scipy import ndimage

from aesq.models.base import JPEG_BLOCK as BLOCK
from aesq.models.base import Score, Scorer, native_centre, native_size

MAX_SIDE = 512
REDUCE = 4
WEIGHTS: dict[str, float] = {
    "sharpness": 0.25,
    "noise": 0.15,
    "blockiness": 0.15,
    "exposure": 0.10,
    "clipping": 0.10,
    "black_level": 0.10,
    "contrast": 0.10,
    "colourfulness": 0.05,
}
# Immerkaer's noise operator: the difference of two Laplacians, blind to linear ramps.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_LAPLACE_TAP_ENERGY = 20.0  # sum of squared taps of the 4-neighbour Laplacian [1, 1, -4, 1, 1]


def _ramp(x: float, zero: float, one: float) -> float:
    """Linear map sending `zero` to 0 and `one` to 1, clipped to [0, 1] (falls when one < zero)."""
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _log_ramp(x: float, zero: float, one: float) -> float:
    """`_ramp` on a log scale; non-positive `x` maps to 0."""
    return _ramp(math.log(x), math.log(zero), math.log(one)) if x > 0 else 0.0


def _shrink(image: Image.Image) -> Image.Image:
    """Resize so the long side is at most MAX_SIDE, keeping aspect; smaller images are returned as is."""
    w, h = image.size
    scale = MAX_SIDE / max(w, h)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)


def _native_crop(image: Image.Image) -> np.ndarray:
    """Luma of a central crop of at most MAX_SIDE^2 native pixels, its corner on the JPEG block grid."""
    return np.asarray(native_centre(image).convert("L"), dtype=np.float32)


def _interior(a: np.ndarray) -> np.ndarray:
    """Drop the one-pixel border where 3x3 filters see padding."""
    return a[1:-1, 1:-1]


def _noise_sigma(luma: np.ndarray) -> float:
    """Immerkaer's fast noise standard deviation estimate (8-bit units)."""
    response = _interior(ndimage.convolve(luma, _IMMERKAER))
    if response.size == 0:
        return 0.0
    return math.sqrt(math.pi / 2) * float(np.abs(response).mean()) / 6.0


def _sharpness(luma: np.ndarray, noise_sigma: float) -> float:
    """Noise-compensated standard deviation of the Laplacian (8-bit units)."""
    lap = _interior(ndimage.laplace(luma))
    if lap.size == 0:
        return 0.0
    energy = float(np.square(lap).mean()) - _LAPLACE_TAP_ENERGY * noise_sigma**2
    return math.sqrt(max(energy, 0.0))


def _blockiness(luma: np.ndarray) -> float:
    """Mean |luma step| across 8x8 block borders over the mean step inside blocks, both axes averaged."""
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(luma, axis=axis)).mean(axis=1 - axis)
        border = steps[BLOCK - 1 :: BLOCK]
        inside = steps.size - border.size
        if border.size == 0 or inside == 0:
            continue
        inside_mean = (float(steps.sum()) - float(border.sum())) / inside
        ratios.append((float(border.mean()) + 1.0) / (inside_mean + 1.0))
    return float(np.mean(ratios)) if ratios else 1.0


def _colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M of an RGB array in 8-bit units."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))


def _measure(image: Image.Image) -> dict[str, float]:
    """Raw feature measurements of one image."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    small = _shrink(image)
    luma8 = np.asarray(small.convert("L"))
    luma = luma8.astype(np.float32)
    hist = np.bincount(luma8.ravel(), minlength=256) / luma8.size
    coarse = small.reduce(REDUCE)
    coarse_rgb = np.asarray(coarse, dtype=np.float32)
    coarse_luma = np.asarray(coarse.convert("L"), dtype=np.float32)
    native = _native_crop(image)
    return {
        "sharpness_lap_std": _sharpness(luma, _noise_sigma(luma)),
        "noise_sigma": _noise_sigma(native),
        "blockiness_ratio": _blockiness(native),
        "exposure_mean": float(hist @ np.arange(256)) / 255.0,
        "clipped_shadows": float(hist[:3].sum()),
        "clipped_highlights": float(hist[253:].sum()),
        "black_level": float(np.searchsorted(np.cumsum(hist), 0.01)) / 255.0,
        "contrast_rms": float(coarse_luma.std()) / 255.0,
        "colourfulness": _colourfulness(coarse_rgb),
        "megapixels": math.prod(native_size(image)) / 1e6,
    }


def _subscores(raw: dict[str, float]) -> dict[str, float]:
    """Map raw measurements to sub-scores in [0, 1] (1 = no problem); see the module docstring."""
    mean = raw["exposure_mean"]
    return {
        "sharpness": _log_ramp(raw["sharpness_lap_std"], 1.0, 16.0),
        "noise": _ramp(raw["noise_sigma"], 12.0, 2.0),
        "blockiness": _ramp(raw["blockiness_ratio"], 2.5, 1.2),
        "exposure": min(_ramp(mean, 0.0, 0.25), _ramp(mean, 1.0, 0.70)),
        "clipping": _ramp(raw["clipped_highlights"] + raw["clipped_shadows"] / 2, 0.50, 0.05),
        "black_level": _ramp(raw["black_level"], 0.50, 0.10),
        "contrast": _ramp(raw["contrast_rms"], 0.0, 0.18),
        "colourfulness": _ramp(raw["colourfulness"], 0.0, 40.0),
        "resolution": _log_ramp(raw["megapixels"], 32 * 32 / 1e6, 256 * 256 / 1e6),
    }


class TechnicalQualityScorer(Scorer):
    """Weight-free technical quality (sharpness, noise, exposure, compression, ...) on a 0-10 scale."""

    name: ClassVar[str] = "technical"
    version: ClassVar[str] = "1"
    input_side: ClassVar[int] = MAX_SIDE

    def prepare(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        """The measurements: all of this scorer's work is CPU work, so it runs on the prefetch threads."""
        return [_measure(image) for image in images]

    def score_prepared(self, batch: list[dict[str, float]]) -> list[Score]:
        """Map each image's measurements to sub-scores and combine them; see the module docstring."""
        return [self._combine(dict(raw)) for raw in batch]

    @staticmethod
    def _combine(raw: dict[str, float]) -> Score:
        """Weighted sub-scores, scaled by the resolution factor, with the sub-scores kept in `raw`."""
        subs = _subscores(raw)
        quality = sum(weight * subs[key] for key, weight in WEIGHTS.items())
        value = 10.0 * subs["resolution"] * quality
        raw.update({f"{key}_score": sub for key, sub in subs.items()})
        return Score(value=value, raw=raw)
