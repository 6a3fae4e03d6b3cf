"""Weight-free technical-quality baseline: classic image statistics mapped to a 0-10 score.

The statistics come from `aesq.models.measurements`, the one measurement module the defect detectors
(`aesq.analysis.defects`) read too, so a score and a defect finding never disagree about a figure.
Most features are measured on the 8-bit luminance (ITU-R 601 luma, PIL mode "L") of the image
shrunk so its long side is at most 512 px (never enlarged), i.e. on what a viewer sees at a
typical display size (transparent areas on white, as aesq shows them). Noise, JPEG compression and pixel
blocks live at the native pixel grid, which shrinking averages away, so those are measured on a central crop
of at most 512x512 native pixels whose corner sits on the 8x8 JPEG block grid. The cost is therefore bounded
whatever the input size.

Images up to 2048x2048 pixels reach the scorer at full size. aesq decodes larger ones reduced by an
integer factor (box filter; see `aesq.core.images`) and passes their native centre crop and native size
along (`aesq.models.base.native_centre`, `native_size`), so noise, compression, pixel blocks and resolution
are measured exactly as on the full image. The other features come from the 512-px working copy made from
the reduced image instead of the full one; the factor is chosen so that both reductions compose where it
can: on 60 test images (5 photographs at 2600x2000 to 7999x7999 pixels, 3 codings) the value moved
by at most 0.04 (mean 0.008) on the 0-10 scale.

Features, why each is there, and its sub-score (each in [0, 1], 1 = no problem):

* sharpness - out-of-focus, motion-blurred and upscaled images lose fine detail. Raw: standard
  deviation of the 4-neighbour Laplacian with the part explained by grain removed,
  ``sqrt(max(E[lap^2] - k * E[r^2], 0))`` with r the response of Immerkaer's noise operator and k the
  ratio of the two operators' energies on grain (20/36 for white grain; measured once per scale on
  white noise shrunk as the working copy is, since resampling correlates grain), so that grain is not
  mistaken for detail. Sub-score rises log-linearly from 1 (0) to 16 (0.9), then to 64 (1)
  (8-bit units): the last tenth tells a crisp image from a slightly softened one.
* noise - sensor grain and dithering. Raw: Immerkaer's (1996) noise sigma read on the calmer half of the
  pixels (after Tai & Yang 2008, so edges and texture are not taken for grain), at the image's own pixel
  grid. Sub-score falls log-linearly from sigma 2 (1) to 32 (0).
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
* blockiness - JPEG compression blurs, rings and at its worst leaves steps at the 8x8 block borders. Raw:
  the estimated quality of the last JPEG compression (1-100, 100 when the decoded pixels show no
  quantisation lattice), and the mean absolute luma step across block borders over the mean step inside
  blocks (about 1 when clean). Sub-score: the lower of quality / 95 and a linear fall of the step ratio
  from 1.2 (1) to 3.0 (0).
* pixelation - a nearest-neighbour enlargement is blocky at its own size and holds no more than its
  source. Raw: side of the repeated-pixel blocks (1 when none). Sub-score falls log-linearly from
  side 1 (1) to 1024 (0): 0.9 at 2, 0.7 at 8.
* resolution - a thumbnail is unusable however clean it is. Raw: native pixel count in megapixels, and
  that over the pixel-block area (effective megapixels). Factor rises log-linearly with the effective
  count from 32x32 px (0) to 256x256 px (1).

Combination: a weighted mean of the first eight sub-scores, gated by the pixelation and resolution
factors::

    value = 10 * resolution * pixelation * sum(w_i * s_i),   sum(w_i) = 1

    w: sharpness 0.25, noise 0.15, blockiness 0.15, exposure 0.10, clipping 0.10,
       black level 0.10, contrast 0.10, colourfulness 0.05

Resolution and pixelation multiply rather than average so no amount of crispness rescues a thumbnail.

Version 2 (version 1 had: noise on all pixels, falling linearly from 2 to 12; sharpness compensated with
20 * sigma^2 of white grain, reaching 1 at 16;
blockiness from the step ratio alone, 1.2 to 2.5; no pixel blocks) follows graded blur, noise, JPEG,
pixelation and dimming more faithfully than BRISQUE does (bench/baseline_iqa.py, BENCHMARKS.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
from PIL import Image

from aesq.models.base import Score, Scorer
from aesq.models.measurements import WORKING_SIDE, Measurements

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
# The raw measurements a score keeps, each the `Measurements` attribute of the same name.
RAW_MEASUREMENTS = (
    "sharpness_lap_std",
    "noise_sigma",
    "blockiness_ratio",
    "jpeg_quality",
    "exposure_mean",
    "clipped_shadows",
    "clipped_highlights",
    "black_level",
    "contrast_rms",
    "colourfulness",
    "megapixels",
    "block_side",
    "effective_megapixels",
)


def _ramp(x: float, zero: float, one: float) -> float:
    """Linear map sending `zero` to 0 and `one` to 1, clipped to [0, 1] (falls when one < zero)."""
    return float(np.clip((x - zero) / (one - zero), 0.0, 1.0))


def _log_ramp(x: float, zero: float, one: float) -> float:
    """`_ramp` on a log scale; non-positive `x` maps to 0."""
    return _ramp(math.log(x), math.log(zero), math.log(one)) if x > 0 else 0.0


def _measure(image: Image.Image) -> dict[str, float]:
    """The raw figures a score keeps, read from the shared measurements of the image."""
    measurements = Measurements(image)
    return {key: float(getattr(measurements, key)) for key in RAW_MEASUREMENTS}


def _subscores(raw: dict[str, float]) -> dict[str, float]:
    """Map raw measurements to sub-scores in [0, 1] (1 = no problem); see the module docstring."""
    mean, sharpness = raw["exposure_mean"], raw["sharpness_lap_std"]
    return {
        "sharpness": 0.9 * _log_ramp(sharpness, 1.0, 16.0) + 0.1 * _log_ramp(sharpness, 16.0, 64.0),
        "noise": _log_ramp(max(raw["noise_sigma"], 2.0), 32.0, 2.0),
        "blockiness": min(_ramp(raw["blockiness_ratio"], 3.0, 1.2), _ramp(raw["jpeg_quality"], 0.0, 95.0)),
        "exposure": min(_ramp(mean, 0.0, 0.25), _ramp(mean, 1.0, 0.70)),
        "clipping": _ramp(raw["clipped_highlights"] + raw["clipped_shadows"] / 2, 0.50, 0.05),
        "black_level": _ramp(raw["black_level"], 0.50, 0.10),
        "contrast": _ramp(raw["contrast_rms"], 0.0, 0.18),
        "colourfulness": _ramp(raw["colourfulness"], 0.0, 40.0),
        "pixelation": _log_ramp(raw["block_side"], 1024.0, 1.0),
        "resolution": _log_ramp(raw["effective_megapixels"], 32 * 32 / 1e6, 256 * 256 / 1e6),
    }


class TechnicalQualityScorer(Scorer):
    """Weight-free technical quality (sharpness, noise, exposure, compression, ...) on a 0-10 scale."""

    name: ClassVar[str] = "technical"
    version: ClassVar[str] = "2"
    input_side: ClassVar[int] = WORKING_SIDE

    def prepare(self, images: Sequence[Image.Image]) -> list[dict[str, float]]:
        """The measurements: all of this scorer's work is CPU work, so it runs on the prefetch threads."""
        return [_measure(image) for image in images]

    def score_prepared(self, batch: list[dict[str, float]]) -> list[Score]:
        """Map each image's measurements to sub-scores and combine them; see the module docstring."""
        return [self._combine(dict(raw)) for raw in batch]

    @staticmethod
    def _combine(raw: dict[str, float]) -> Score:
        """Weighted sub-scores, scaled by the resolution and pixelation factors, with the sub-scores kept in `raw`."""
        subs = _subscores(raw)
        quality = sum(weight * subs[key] for key, weight in WEIGHTS.items())
        value = 10.0 * subs["resolution"] * subs["pixelation"] * quality
        raw.update({f"{key}_score": sub for key, sub in subs.items()})
        return Score(value=value, raw=raw)
