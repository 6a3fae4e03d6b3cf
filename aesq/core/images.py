"""Decoding object bytes into images, and refusing what is not a usable image with a readable reason.

Every problem with one object, whatever a decoder raises, is an `ImageRejected` for that object only.
Validation (`inspect_image`) decodes in a pool of worker processes with a time limit, so a decoder that
crashes or hangs rejects one image instead of taking down or blocking the process. Both it and
`decode_image` hold the pixels they decode in a per-process `PixelBudget`, and `decode_image` keeps only
what the models need of a large image, so memory stays bounded however large the images of a batch.

`decode_image` hands the pixels over in the image's own colour mode: each model converts them to RGB the
way its upstream code does (`prepare()`), and aesq's own measurements, embedder and thumbnails composite
transparent areas on white (`aesq.models.base.on_white`). 16- and 32-bit integer greyscale is scaled to
8 bits here, for every consumer alike.
"""

from __future__ import annotations

import functools
import io
import math
import multiprocessing
import os
import threading
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import TimeoutError as DecodeTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

from pebble import ProcessExpired, ProcessFuture, ProcessPool
from PIL import Image, UnidentifiedImageError

# Modes that convert to RGB without losing meaning.
SUPPORTED_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr"})
# 16- and 32-bit integer greyscale (scans, high-bit-depth exports), scaled to 8 bits (`_eight_bit`).
INTEGER_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
SIXTEEN_BIT_TOP = 0xFFFF
THIRTY_TWO_BIT_TOP = 0x7FFFFFFF  # mode "I" holds signed 32-bit integers
# Mode "I" levels above 16 bits are taken as spanning the 32-bit range only from here on; in between, the
# bit depth is anybody's guess (scaled as 32-bit data, a 17- to 24-bit image would come out black).
THIRTY_TWO_BIT_FLOOR = 1 << 24
# Modes that `Image.reduce` averages meaningfully; others are converted to the mode named here first.
REDUCE_AS = {"1": "L", "P": "RGB", "PA": "RGBA"}
# Modes with a straight (not premultiplied) alpha channel.
STRAIGHT_ALPHA_MODES = frozenset({"RGBA", "LA"})

# Images up to this many pixels are decoded at their native size (generators produce up to 2048x2048).
NATIVE_PIXELS = 2048 * 2048
# The largest side any model resizes an image to (the technical scorer's working copy).
LARGEST_MODEL_SIDE = 512
# Larger images keep a short side of at least twice that, so every model still resamples from at
# least twice its input.
REDUCED_MIN_SIDE = 2 * LARGEST_MODEL_SIDE
# How long one validation decode may take before the image is refused as hanging its decoder.
DECODE_TIMEOUT_SECONDS = 60.0

# aesq applies its own configurable pixel limit before decoding; PIL's global one would fire first.
Image.MAX_IMAGE_PIXELS = None
# Pillow allocates large images in blocks of this size (default 16 MiB). Blocks above glibc's largest
# mmap threshold (32 MiB) are mapped and unmapped, so a large image's memory goes back to the system
# when freed instead of staying in the malloc arena of the thread that decoded it.
Image.core.set_block_size(64 * 1024 * 1024)


class ImageRejected(ValueError):
    """The bytes are not an image aesq can score; the message is the stored reason."""


@dataclass(frozen=True)
class ImageFacts:
    """What ingest records about a valid image."""

    width: int
    height: int
    format: str
    mode: str
    frames: int


class PixelBudget:
    """Bounds the decoded pixels a process holds at once, so many large images cannot exhaust its memory.

    Requests are served in arrival order; one larger than the whole budget waits until it is alone.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._in_flight = 0
        self._waiting: deque[object] = deque()
        self._changed = threading.Condition()

    @contextmanager
    def holding(self, pixels: int) -> Iterator[None]:
        """Wait for room for `pixels`, and hold them while the block runs."""
        turn = object()
        with self._changed:
            self._waiting.append(turn)
            self._changed.wait_for(lambda: self._waiting[0] is turn and self._fits(pixels))
            self._waiting.popleft()
            self._in_flight += pixels
            self._changed.notify_all()  # the next in line may fit beside this one
        try:
            yield
        finally:
            with self._changed:
                self._in_flight -= pixels
                self._changed.notify_all()

    def _fits(self, pixels: int) -> bool:
        """Whether `pixels` more may be decoded now."""
        return self._in_flight == 0 or self._in_flight + pixels <= self.capacity


_budgets: dict[int, PixelBudget] = {}
_budgets_lock = threading.Lock()


def pixel_budget(capacity: int) -> PixelBudget:
    """This process's budget of `capacity` pixels: every caller with the same setting shares one."""
    with _budgets_lock:
        if capacity not in _budgets:
            _budgets[capacity] = PixelBudget(capacity)
        return _budgets[capacity]


class _ValidationWorkers:
    """Worker processes for validation decodes.

    They start from a forkserver (safe beside the caller's threads), which imports the main module once:
    a script that validates images must keep its work under `if __name__ == "__main__"`, as the `aesq`
    command, pytest and the benchmarks do. pebble gives up on a pool whose worker dies while idle;
    such a pool is replaced on the next call.
    """

    def __init__(self) -> None:
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()

    def validate(self, data: bytes, max_pixels: int, timeout_seconds: float) -> ImageFacts:
        """`_validate` in a worker; a crash or a timeout there rejects the image."""
        try:
            return self._validate_once(data, max_pixels, timeout_seconds)
        except BrokenProcessPool:  # a validation still queued when the pool broke is not the image's fault
            return self._validate_once(data, max_pixels, timeout_seconds)

    def _validate_once(self, data: bytes, max_pixels: int, timeout_seconds: float) -> ImageFacts:
        """One try of `validate`; BrokenProcessPool when the pool broke before the validation ran."""
        try:
            return self._schedule(data, max_pixels, timeout_seconds).result()
        except DecodeTimeout:
            raise ImageRejected(f"decoding took longer than {timeout_seconds:g} s (hanging decoder?)") from None
        except ProcessExpired as crash:
            raise ImageRejected(f"the decoder crashed (worker exit code {crash.exitcode})") from None

    def _schedule(self, data: bytes, max_pixels: int, timeout_seconds: float) -> ProcessFuture:
        """Queue a validation, starting the pool on first use and replacing it when pebble gave up on it."""
        with self._lock:
            if self._pool is not None and not self._pool.active:
                self._pool.stop()
                self._pool.join()
                self._pool = None
            if self._pool is None:
                self._pool = ProcessPool(
                    max_workers=os.cpu_count() or 1, context=multiprocessing.get_context("forkserver")
                )
            return self._pool.schedule(_validate, (data, max_pixels), timeout=timeout_seconds)


_validation_workers = _ValidationWorkers()


@contextmanager
def _rejecting(problem: str) -> Iterator[None]:
    """Turn anything a decoder raises inside into an `ImageRejected` naming `problem` and the error."""
    try:
        yield
    except ImageRejected:
        raise
    except Exception as error:
        raise ImageRejected(f"{problem}: {type(error).__name__}: {error}") from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily and check everything that can be checked before decoding pixels."""
    if not data:
        raise ImageRejected("empty object (0 bytes)")
    with warnings.catch_warnings(), _rejecting("unreadable image header"):
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise ImageRejected("not an image (no known image format)") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise ImageRejected(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageRejected(
            f"{width}x{height} = {width * height:,} pixels exceeds the limit of {max_pixels:,} (decompression bomb?)"
        )
    if image.mode == "F":
        raise ImageRejected(
            "floating-point data (mode 'F', such as a depth map or an HDR export) has no display range; "
            "save it as an 8- or 16-bit image"
        )
    if image.mode not in SUPPORTED_MODES | INTEGER_GREY_MODES:
        raise ImageRejected(f"unsupported colour mode {image.mode!r}")
    return image


def _load(image: Image.Image) -> None:
    """Decode all pixel data so truncated or corrupt files are caught here, not in a model."""
    with _rejecting("truncated or corrupt image data"):
        image.load()


def _draft_for_validation(image: Image.Image) -> int:
    """Have formats that can (JPEG) decode at 1/8 scale, which still reads every byte; the pixels it will decode."""
    with _rejecting("unreadable image header"):
        image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
    return image.width * image.height


@functools.cache
def _sixteen_to_eight_bits() -> list[int]:
    """Lookup table from 16-bit to 8-bit levels, rounded (65535 -> 255, 257 -> 1)."""
    return [round(level * 255 / SIXTEEN_BIT_TOP) for level in range(SIXTEEN_BIT_TOP + 1)]


def _eight_bit(image: Image.Image) -> Image.Image:
    """Integer greyscale as 8-bit greyscale ("L") over its nominal range, other images as they are.

    16-bit modes span 0-65535. Mode "I" does not say its bit depth: values within 16 bits are taken as
    16-bit data (what 16-bit PGM and TIFF decode to), values reaching past 24 bits as 32-bit data; anything
    in between, and negative values (a signed measurement), is a data array rather than a photograph, and is
    refused.
    """
    if image.mode not in INTEGER_GREY_MODES:
        return image
    with _rejecting("unreadable integer levels"):
        wide = image if image.mode == "I" else image.convert("I")
        low, high = wide.getextrema()  # one band: the lowest and highest level
    assert isinstance(low, int) and isinstance(high, int), "a one-band integer image has integer extrema"
    if low < 0:
        raise ImageRejected(
            f"signed integer data with negative values (mode {image.mode!r}, down to {low}) is a data array, "
            "not a photograph; save it as an 8- or 16-bit image"
        )
    if SIXTEEN_BIT_TOP < high < THIRTY_TWO_BIT_FLOOR:
        raise ImageRejected(
            f"32-bit integer levels up to {high} (mode {image.mode!r}) are neither 16-bit nor full-range 32-bit data, "
            "so their brightness is unknown; save it as an 8- or 16-bit image"
        )
    with _rejecting("cannot scale it to 8 bits"):
        if high <= SIXTEEN_BIT_TOP:
            return wide.point(_sixteen_to_eight_bits(), "L")
        return wide.point(lambda level: level * (255 / THIRTY_TWO_BIT_TOP) + 0.5).convert("L")


def _validate(data: bytes, max_pixels: int) -> ImageFacts:
    """`inspect_image`'s work in a validation worker: open, count frames, decode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        image = _open(data, max_pixels)
        with _rejecting("cannot count its frames"):
            frames = getattr(image, "n_frames", 1)
        facts = ImageFacts(image.width, image.height, image.format or "unknown", image.mode, frames)
        _draft_for_validation(image)
        _load(image)
        _eight_bit(image)
    return facts


def inspect_image(
    data: bytes, max_pixels: int, budget: PixelBudget, timeout_seconds: float = DECODE_TIMEOUT_SECONDS
) -> ImageFacts:
    """Validate `data` as an image by decoding it fully (at reduced scale where the format allows).

    The header is read here, to reserve the pixels the decode needs in `budget`; the decode runs in a
    worker process, so a decoder that crashes or runs past `timeout_seconds` rejects this image only.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pixels = _draft_for_validation(_open(data, max_pixels))
    with budget.holding(pixels):
        return _validation_workers.validate(data, max_pixels, timeout_seconds)


def _reduction_factor(width: int, height: int) -> int:
    """How much a large image is reduced: at least enough to fit NATIVE_PIXELS, at most what keeps its
    short side at REDUCED_MIN_SIDE, preferring a factor that divides the box reduction a model shrinking
    it to LARGEST_MODEL_SIDE makes first (Pillow's `reducing_gap`), so that the two compose into it."""
    least = math.ceil(math.sqrt(width * height / NATIVE_PIXELS))
    most = max(least, min(width, height) // REDUCED_MIN_SIDE)
    model_reduction = max(width, height) // LARGEST_MODEL_SIDE
    return max((factor for factor in range(least, most + 1) if model_reduction % factor == 0), default=most)


def _reduced(image: Image.Image) -> Image.Image:
    """A large decoded image shrunk by an integer factor (box filter) to what the models need, with its native
    size and the native centre crop the image measurements use recorded in `info`. Palette and 1-bit images
    are converted first (to RGB, RGBA or L: the colours the models would convert them to), as averaging
    palette indices means nothing."""
    # Imported here: validation workers import this module and must not load the models' torch.
    from aesq.models.base import NATIVE_CENTRE, NATIVE_SIZE, native_centre

    mode = REDUCE_AS.get(image.mode, image.mode)
    if image.mode == "P" and "transparency" in image.info:
        mode = "RGBA"
    averageable = image if mode == image.mode else image.convert(mode)  # no copy of the large pixels otherwise
    factor = _reduction_factor(*averageable.size)
    if mode in STRAIGHT_ALPHA_MODES:
        # Pillow reduces these premultiplied, which blackens the colour stored under transparent pixels that
        # the models' plain RGB conversion keeps: each band is averaged on its own instead.
        small = Image.merge(mode, [band.reduce(factor) for band in averageable.split()])
    else:
        small = averageable.reduce(factor)
    small.info.update({NATIVE_SIZE: averageable.size, NATIVE_CENTRE: native_centre(averageable)})
    return small


def decode_image(data: bytes, max_pixels: int, budget: PixelBudget) -> Image.Image:
    """The pixels of the (first frame of the) image in its own colour mode, integer greyscale scaled to 8
    bits, holding its decoded pixels in `budget` meanwhile.

    Images of at most NATIVE_PIXELS come at full resolution. Larger ones come reduced by an integer
    factor (`_reduction_factor`) to at most NATIVE_PIXELS, carrying their native size and native
    centre crop (see `aesq.models.base`). Large JPEGs too are decoded at full size first rather than with
    libjpeg's `draft` scaling: the native centre needs native pixels, and the budget bounds the decode.
    """
    image = _open(data, max_pixels)
    with budget.holding(image.width * image.height):
        _load(image)
        pixels = _eight_bit(image)
        with _rejecting("cannot reduce it"):
            if image.width * image.height > NATIVE_PIXELS:
                return _reduced(pixels)
        # a copy of the opened file's image no longer holds on to the encoded bytes it was read from
        return pixels.copy() if pixels is image else pixels
