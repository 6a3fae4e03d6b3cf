"""Every image measurement aesq makes, in one place: the technical scorer and the defect detectors both
read their figures from `Measurements`, so they cannot disagree about an image's sharpness, noise, JPEG
blockiness or exposure.

Both receive the same decoded image (`aesq.core.fetch.fetch_asset`; images over 2048x2048 pixels come
reduced, carrying their native size and native centre, see `aesq.models.base`), and every figure here is
computed once per image by one function on one of two views of it:

Both views see the image as aesq shows it, transparent areas on white (`aesq.models.base.on_white`):

* the working copy: the image shrunk so its long side is at most WORKING_SIDE px (bilinear, never
  enlarged), in 8-bit ITU-R 601 luma (PIL mode "L"), i.e. what a viewer sees at a typical display size.
  Sharpness, exposure, clipping, black level, contrast, colourfulness and colour cast live here.
* the native centre: a central crop of at most 512x512 native pixels, its corner on the 8x8 JPEG block
  grid. Noise, JPEG blockiness and upscaling live at the native pixel grid, which shrinking averages away.

The cost is therefore bounded whatever the input size. See `aesq.models.technical` for why each figure
is there and how the score maps it.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color

from aesq.models.base import JPEG_BLOCK, native_centre, native_size, on_white

WORKING_SIDE = 512
# Contrast and colourfulness are measured on the working copy box-reduced this many times, so grain and
# chroma noise do not count as contrast or colour.
REDUCE = 4
# Immerkaer's noise operator: the difference of two Laplacians, blind to linear ramps.
_IMMERKAER = np.array([[1, -2, 1], [-2, 4, -2], [1, -2, 1]], dtype=np.float32)
_LAPLACE_TAP_ENERGY = 20.0  # sum of squared taps of the 4-neighbour Laplacian [1, 1, -4, 1, 1]
# 8-bit luma at or above which a pixel is a blown highlight, at or below which a crushed shadow.
HIGHLIGHT_LUMA = 253
SHADOW_LUMA = 2
# The brightest share of the working copy whose mean colour tells a colour cast (highlights should be neutral).
HIGHLIGHT_PERCENTILE = 95


def _interior(a: np.ndarray) -> np.ndarray:
    """Drop the one-pixel border where 3x3 filters see padding."""
    return a[1:-1, 1:-1]


def noise_sigma(luma: np.ndarray) -> float:
    """Immerkaer's (1996) fast estimate of the standard deviation of Gaussian noise (8-bit units)."""
    response = _interior(ndimage.convolve(luma, _IMMERKAER))
    if response.size == 0:
        return 0.0
    return math.sqrt(math.pi / 2) * float(np.abs(response).mean()) / 6.0


def sharpness(luma: np.ndarray) -> float:
    """Standard deviation of the 4-neighbour Laplacian with the part explained by noise removed (8-bit units),
    ``sqrt(max(E[lap^2] - 20 * noise_sigma^2, 0))``, so that grain is not mistaken for detail."""
    lap = _interior(ndimage.laplace(luma))
    if lap.size == 0:
        return 0.0
    energy = float(np.square(lap).mean()) - _LAPLACE_TAP_ENERGY * noise_sigma(luma) ** 2
    return math.sqrt(max(energy, 0.0))


def blockiness(luma: np.ndarray) -> float:
    """Mean |luma step| across 8x8 block borders over the mean step inside blocks, both axes averaged, one
    grey level added to both so a flat crop reads 1 (about 1 when clean, higher with JPEG blocks)."""
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(luma, axis=axis)).mean(axis=1 - axis)
        border = steps[JPEG_BLOCK - 1 :: JPEG_BLOCK]
        inside = steps.size - border.size
        if border.size == 0 or inside == 0:
            continue
        inside_mean = (float(steps.sum()) - float(border.sum())) / inside
        ratios.append((float(border.mean()) + 1.0) / (inside_mean + 1.0))
    return float(np.mean(ratios)) if ratios else 1.0


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk (2003) colourfulness M of an RGB array in 8-bit units."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    rg = r - g
    yb = 0.5 * (r + g) - b
    return math.hypot(float(rg.std()), float(yb.std())) + 0.3 * math.hypot(float(rg.mean()), float(yb.mean()))


def _shrink(image: Image.Image) -> Image.Image:
    """Resize so the long side is at most WORKING_SIDE, keeping aspect; smaller images are returned as is."""
    w, h = image.size
    scale = WORKING_SIDE / max(w, h)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=1.0)


class Measurements:
    """The measurements of one decoded image, each computed on first use and kept (not thread-safe: one
    object per image and thread)."""

    def __init__(self, image: Image.Image) -> None:
        self.image = on_white(image)

    @cached_property
    def working(self) -> Image.Image:
        """The RGB working copy, long side at most WORKING_SIDE."""
        return _shrink(self.image)

    @cached_property
    def _working_luma8(self) -> np.ndarray:
        """8-bit luma of the working copy."""
        return np.asarray(self.working.convert("L"))

    @cached_property
    def _histogram(self) -> np.ndarray:
        """Share of the working copy's pixels at each 8-bit luma."""
        luma8 = self._working_luma8
        return np.bincount(luma8.ravel(), minlength=256) / luma8.size

    @cached_property
    def _coarse(self) -> Image.Image:
        """The working copy box-reduced REDUCE times."""
        return self.working.reduce(REDUCE)

    @cached_property
    def native_luma(self) -> np.ndarray:
        """Luma (8-bit units, float) of the native centre crop."""
        return np.asarray(native_centre(self.image).convert("L"), dtype=np.float32)

    @cached_property
    def sharpness_lap_std(self) -> float:
        """Noise-compensated Laplacian standard deviation of the working copy (`sharpness`); low means blurry."""
        return sharpness(self._working_luma8.astype(np.float32))

    @cached_property
    def noise_sigma(self) -> float:
        """Noise standard deviation at the native pixel grid (`noise_sigma`), 8-bit units."""
        return noise_sigma(self.native_luma)

    @cached_property
    def blockiness_ratio(self) -> float:
        """JPEG block-border step ratio at the native pixel grid (`blockiness`); about 1 when clean."""
        return blockiness(self.native_luma)

    @cached_property
    def exposure_mean(self) -> float:
        """Mean luma of the working copy in [0, 1]."""
        return float(self._histogram @ np.arange(256)) / 255.0

    @cached_property
    def clipped_shadows(self) -> float:
        """Share of the working copy's pixels at luma <= SHADOW_LUMA (crushed shadows)."""
        return float(self._histogram[: SHADOW_LUMA + 1].sum())

    @cached_property
    def clipped_highlights(self) -> float:
        """Share of the working copy's pixels at luma >= HIGHLIGHT_LUMA (blown highlights)."""
        return float(self._histogram[HIGHLIGHT_LUMA:].sum())

    def _luma_percentile(self, share: float) -> float:
        """The lowest luma in [0, 1] at or below which at least `share` of the working copy's pixels lie."""
        return float(np.searchsorted(np.cumsum(self._histogram), share)) / 255.0

    @cached_property
    def black_level(self) -> float:
        """1st-percentile luma of the working copy in [0, 1]."""
        return self._luma_percentile(0.01)

    @cached_property
    def tonal_range(self) -> float:
        """Spread between the 1st and 99th luma percentiles of the working copy, in [0, 1]."""
        return self._luma_percentile(0.99) - self.black_level

    @cached_property
    def contrast_rms(self) -> float:
        """RMS contrast (standard deviation of luma in [0, 1]) of the box-reduced working copy."""
        return float(np.asarray(self._coarse.convert("L"), dtype=np.float32).std()) / 255.0

    @cached_property
    def colourfulness(self) -> float:
        """Hasler & Suesstrunk colourfulness of the box-reduced working copy."""
        return colourfulness(np.asarray(self._coarse, dtype=np.float32))

    @cached_property
    def megapixels(self) -> float:
        """Native pixel count in millions."""
        return math.prod(native_size(self.image)) / 1e6

    @cached_property
    def short_side(self) -> int:
        """Native short side in pixels."""
        return min(native_size(self.image))

    @cached_property
    def highlight_chroma(self) -> float:
        """Lab chroma (a*, b* distance from neutral) of the mean colour of the working copy's brightest pixels."""
        lab = color.rgb2lab(np.asarray(self.working))
        lightness = lab[..., 0]
        highlights = lab[lightness >= np.percentile(lightness, HIGHLIGHT_PERCENTILE)]
        return float(np.hypot(highlights[:, 1].mean(), highlights[:, 2].mean()))

    @cached_property
    def fine_detail_share(self) -> float:
        """Share of the native centre's luma variance that a halve-then-double round trip loses: an upscaled
        image has almost no detail at its own pixel scale. 1 for a flat crop (nothing to judge by)."""
        luma = self.native_luma
        variance = float(luma.var())
        height, width = luma.shape
        if variance == 0 or min(height, width) < 2:
            return 1.0
        halved = Image.fromarray(luma).resize((width // 2, height // 2), Image.Resampling.LANCZOS)
        round_trip = np.asarray(halved.resize((width, height), Image.Resampling.BICUBIC))
        return float(np.mean((luma - round_trip) ** 2)) / variance
