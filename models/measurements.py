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
  grid. JPEG compression, pixel blocks and upscaling live at the native pixel grid, which shrinking averages
  away. Noise and JPEG block steps are read on its own pixels: when a nearest-neighbour enlargement repeated
  each pixel into a block, on one pixel per block (block edges are neither grain nor JPEG borders).

The cost is therefore bounded whatever the input size. See `aesq.models.technical` for why each figure
is there and how the score maps it.
"""

from __future__ import annotations

import math
from functools import cached_property, lru_cache

import numpy as np
import scipy.fft
from PIL import Image
from skimage import color

from aesq.models.base import JPEG_BLOCK, native_centre, native_size, on_white

WORKING_SIDE = 512
# Contrast and colourfulness are measured on the working copy box-reduced this many times, so grain and
# chroma noise do not count as contrast or colour.
REDUCE = 4
# E[lap^2] / E[r^2] of white grain: the squared taps of the 4-neighbour Laplacian (1 + 1 + 16 + 1 + 1) over those
# of Immerkaer's operator (outer product of [1, -2, 1] with itself: 36).
WHITE_GRAIN_RATIO = 20.0 / 36.0
# Side of the white-noise patch on which a resampled working copy's grain ratio is measured.
GRAIN_PATCH_SIDE = 256
# 8-bit luma at or above which a pixel is a blown highlight, at or below which a crushed shadow.
HIGHLIGHT_LUMA = 253
SHADOW_LUMA = 2
# The brightest share of the working copy whose mean colour tells a colour cast (highlights should be neutral).
HIGHLIGHT_PERCENTILE = 95
# A nearest-neighbour upscale repeats each source line of pixels; the native centre must show at least this many
# whole runs of repeated lines on each axis before the repeats are taken for pixel blocks.
MIN_BLOCK_RUNS = 16
# ... of which at least this share must be floor(f) or ceil(f) lines long, and the two axes' f must agree this well.
MIN_REGULAR_RUN_SHARE = 0.6
BLOCK_AXES_AGREEMENT = 0.1

# JPEG quality estimate. JPEG divides each 8x8 block's DCT coefficients by a step and rounds, so a decoded JPEG's
# coefficients sit on multiples of that step; the steps are the IJG standard luminance table (ITU-T T.81,
# Annex K) scaled by the quality setting. Read at the lowest AC frequencies, where coefficients are plentiful.
_STANDARD_LUMA_STEPS = {(0, 1): 11, (1, 0): 12, (1, 1): 12, (0, 2): 10, (2, 0): 14, (1, 2): 14, (2, 1): 13}
_DCT = scipy.fft.dct(np.eye(JPEG_BLOCK), axis=0, norm="ortho")
_DCT_BASIS = np.stack([np.outer(_DCT[u], _DCT[v]).ravel() for u, v in _STANDARD_LUMA_STEPS], axis=1)
_STEPS = np.arange(3, 256)  # candidate quantisation steps
_MAGNITUDES = np.arange(1024)  # |coefficient| of 8-bit luma, rounded
# A coefficient is evidence for a step only if that step quantises it to a non-zero multiple.
_EVIDENT = (_MAGNITUDES[None, :] >= _STEPS[:, None] / 2).astype(np.float64)
_ON_LATTICE = np.cos(2 * np.pi * _MAGNITUDES[None, :] / _STEPS[:, None]) * _EVIDENT
MIN_LATTICE_COEFFICIENTS = 24
MIN_LATTICE_COHERENCE = 0.7
MIN_LATTICE_SUPPORT = 0.02  # of the non-zero multiples, at least this share single and this share higher
LATTICE_AGREEMENT = 0.25  # frequencies' scale factors within this share of their median


def _second_difference(luma: np.ndarray, axis: int) -> np.ndarray:
    """[1, -2, 1] along `axis`, on the lines that have both neighbours."""
    if axis == 0:
        return luma[:-2] - 2 * luma[1:-1] + luma[2:]
    return luma[:, :-2] - 2 * luma[:, 1:-1] + luma[:, 2:]


def _immerkaer_response(luma: np.ndarray) -> np.ndarray:
    """Absolute response of Immerkaer's noise operator (blind to linear ramps), on the pixels with all 8
    neighbours; his kernel is the outer product of two second differences, so it is applied axis by axis."""
    return np.abs(_second_difference(_second_difference(luma, 0), 1))


def _laplacian(luma: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian on the pixels with all 4 neighbours (same shape as `_immerkaer_response`)."""
    return _second_difference(luma, 0)[:, 1:-1] + _second_difference(luma, 1)[1:-1, :]


def noise_sigma(luma: np.ndarray) -> float:
    """Standard deviation of Gaussian noise (8-bit units): Immerkaer's estimate read only on the calmer half of
    the pixels by gradient (after Tai & Yang 2008), so edges and texture are not taken for grain."""
    if min(luma.shape) < 3:
        return 0.0
    gradient = np.abs(luma[2:, 1:-1] - luma[:-2, 1:-1]) + np.abs(luma[1:-1, 2:] - luma[1:-1, :-2])
    calm = gradient <= np.median(gradient[::2, ::2])  # every fourth pixel places the median
    return math.sqrt(math.pi / 2) * float(_immerkaer_response(luma)[calm].mean()) / 6.0  # Immerkaer (1996)


def sharpness(luma: np.ndarray, grain_ratio: float = WHITE_GRAIN_RATIO) -> float:
    """Standard deviation of the 4-neighbour Laplacian with the part explained by grain removed (8-bit units),
    ``sqrt(max(E[lap^2] - grain_ratio * E[r^2], 0))`` with r Immerkaer's response over all pixels, so that grain
    is not mistaken for detail. `grain_ratio` is E[lap^2] / E[r^2] of the grain itself: 20 / 36 (the kernels'
    squared taps) for white grain, more when resampling has made neighbouring pixels' grain alike."""
    if min(luma.shape) < 3:
        return 0.0
    energy = float(np.square(_laplacian(luma)).mean()) - grain_ratio * float(
        np.square(_immerkaer_response(luma)).mean()
    )
    return math.sqrt(max(energy, 0.0))


def bilinear_residual_scale(source: int, target: int) -> float:
    """The bilinear part of Pillow's shrink from `source` to `target` px with reducing_gap=1.0 (as `_shrink`
    does): an integer box `reduce` first, which leaves grain white, then this scale in (0.5, 1]."""
    if target >= source:
        return 1.0
    factor = int(source / target) or 1
    return target * factor / source


@lru_cache(maxsize=1024)
def resampled_grain_ratio(scale: float) -> float:
    """`sharpness`'s grain ratio after a bilinear shrink by `scale` in (0.5, 1], measured once per scale on a
    white-noise patch of at most 512 px: interpolation averages neighbouring grain, and the Laplacian keeps more
    of that than Immerkaer's operator does."""
    if scale >= 1:
        return WHITE_GRAIN_RATIO
    side = GRAIN_PATCH_SIDE
    grain = np.random.default_rng(0).normal(0.0, 16.0, (round(side / scale),) * 2).astype(np.float32)
    patch = np.asarray(Image.fromarray(grain).resize((side, side), Image.Resampling.BILINEAR))
    return float(np.square(_laplacian(patch)).mean() / np.square(_immerkaer_response(patch)).mean())


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


def _lattice_step(histogram: np.ndarray) -> int | None:
    """The largest quantisation step on whose multiples one frequency's coefficient magnitudes sit, or None: at
    least MIN_LATTICE_COEFFICIENTS non-zero multiples, mean cos(2 pi c / step) >= MIN_LATTICE_COHERENCE, and
    both single and higher multiples present (a tiled or gridded drawing repeats one value, which any divisor
    of it would fit)."""
    counts = _EVIDENT @ histogram
    coherence = (_ON_LATTICE @ histogram) / np.maximum(counts, 1)
    for step in _STEPS[(counts >= MIN_LATTICE_COEFFICIENTS) & (coherence >= MIN_LATTICE_COHERENCE)][::-1]:
        multiples = np.rint(_MAGNITUDES / step)
        singles, higher = histogram[multiples == 1].sum(), histogram[multiples >= 2].sum()
        if min(singles, higher) >= MIN_LATTICE_SUPPORT * (singles + higher):
            return int(step)
    return None


def jpeg_quality(luma: np.ndarray) -> float:
    """The IJG quality (1-100) of the last JPEG compression of 8-bit luma on the 8x8 grid from its top-left
    corner; 100 when no quantisation lattice shows: never compressed, since resized, filtered or noised, or
    compressed so hard that few coefficients survive (the block-step ratio scores those). Each low frequency's
    `_lattice_step` over the standard table's step is the quality's scale factor; at least three frequencies
    must agree within LATTICE_AGREEMENT of their median."""
    height, width = (side - side % JPEG_BLOCK for side in luma.shape)
    blocks = luma[:height, :width].reshape(height // JPEG_BLOCK, JPEG_BLOCK, width // JPEG_BLOCK, JPEG_BLOCK)
    pixels = blocks.transpose(0, 2, 1, 3).reshape(-1, JPEG_BLOCK * JPEG_BLOCK).astype(np.float64)
    magnitudes = np.minimum(np.abs(np.rint(pixels @ _DCT_BASIS)), _MAGNITUDES[-1]).astype(np.int64)
    scales = []
    for column, standard_step in enumerate(_STANDARD_LUMA_STEPS.values()):
        step = _lattice_step(np.bincount(magnitudes[:, column], minlength=_MAGNITUDES.size))
        if step is not None:
            scales.append(100 * step / standard_step)
    if len(scales) < 3:
        return 100.0
    median = float(np.median(scales))
    agreeing = [scale for scale in scales if abs(scale - median) <= LATTICE_AGREEMENT * median]
    if len(agreeing) < 3:
        return 100.0
    scale = float(np.median(agreeing))  # IJG: scale = 5000 / quality below 50, 200 - 2 * quality above
    return float(np.clip(5000 / scale if scale > 100 else (200 - scale) / 2, 1, 100))


def line_runs(luma: np.ndarray, axis: int) -> np.ndarray:
    """Index of the first line of each run of identical neighbouring lines (rows for axis 0, columns for 1)."""
    same = np.all(np.diff(luma, axis=axis) == 0, axis=1 - axis)
    return np.flatnonzero(np.concatenate(([True], ~same)))


def repeat_factor(starts: np.ndarray, length: int) -> float:
    """How many times a nearest-neighbour upscale repeated each line of an axis of `length` lines whose runs of
    identical lines begin at `starts` (`line_runs`), 1 when it did not: an upscale by f leaves no run shorter
    than floor(f), and most runs floor(f) or ceil(f) long (longer ones are source lines that were already
    alike); drawings and photographs have shorter or irregular runs."""
    runs = np.diff(np.append(starts, length))[1:-1]  # the crop cuts the first and last run
    if runs.size < MIN_BLOCK_RUNS or runs.min() < 2:
        return 1.0
    factor = float(runs[runs < 2 * runs.min()].mean())
    regular = np.isin(runs, (math.floor(factor), math.ceil(factor))).mean()
    return factor if regular >= MIN_REGULAR_RUN_SHARE else 1.0


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
    def _line_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Where each run of identical rows, and of identical columns, of the native centre begins."""
        return line_runs(self.native_luma, 0), line_runs(self.native_luma, 1)

    @cached_property
    def block_side(self) -> float:
        """Side of the pixel blocks a nearest-neighbour upscale left at the native grid (geometric mean of both
        axes' `repeat_factor`; 1 unless both axes repeat lines alike)."""
        (rows, columns), shape = self._line_starts, self.native_luma.shape
        down, across = repeat_factor(rows, shape[0]), repeat_factor(columns, shape[1])
        if min(down, across) == 1 or abs(down - across) > BLOCK_AXES_AGREEMENT * max(down, across):
            return 1.0
        return math.sqrt(down * across)

    @cached_property
    def _grid_luma(self) -> np.ndarray:
        """The native centre with one line kept of each run of repeats when it is pixelated: the image's own
        pixels, on which noise and JPEG blocks are measured (block edges are neither)."""
        if self.block_side == 1:
            return self.native_luma
        return self.native_luma[np.ix_(*self._line_starts)]

    @cached_property
    def sharpness_lap_std(self) -> float:
        """Grain-compensated Laplacian standard deviation of the working copy (`sharpness`); low means blurry."""
        scale = bilinear_residual_scale(max(self.image.size), max(self.working.size))
        return sharpness(self._working_luma8.astype(np.float32), resampled_grain_ratio(round(scale, 3)))

    @cached_property
    def noise_sigma(self) -> float:
        """Noise standard deviation at the image's own pixel grid (`noise_sigma`), 8-bit units."""
        return noise_sigma(self._grid_luma)

    @cached_property
    def blockiness_ratio(self) -> float:
        """JPEG block-border step ratio at the image's own pixel grid (`blockiness`); about 1 when clean."""
        return blockiness(self._grid_luma)

    @cached_property
    def jpeg_quality(self) -> float:
        """Estimated quality of the last JPEG compression at the native pixel grid (`jpeg_quality`); 100 when none
        shows, and for pixel blocks, whose few distinct coefficients would fit a lattice by chance."""
        return 100.0 if self.block_side > 1 else jpeg_quality(self.native_luma)

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
    def effective_megapixels(self) -> float:
        """Native pixel count in millions over the pixel-block area: what a pixelated image really holds."""
        return self.megapixels / self.block_side**2

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
