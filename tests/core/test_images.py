"""Image validation and decoding on images built in memory: facts, rejection reasons, the modes handed to the
models (integer greyscale scaled to 8 bits), isolation from whatever a decoder does, and the bounds on decoded
memory."""

from __future__ import annotations

import io
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import psutil
import pytest
from PIL import Image, features

from aesq.core.images import (
    NATIVE_PIXELS,
    REDUCED_MIN_SIDE,
    ImageFacts,
    ImageRejected,
    PixelBudget,
    decode_image,
    inspect_image,
)
from aesq.models import EMBEDDERS, SCORERS
from aesq.models.base import NATIVE_CENTRE, NATIVE_SIZE, native_centre, native_size
from tests.helpers import jpeg_bytes, noise_image, photo, png_bytes, tiff_whose_second_page_has_no_width

LIMIT = 10_000_000
BUDGET = PixelBudget(LIMIT)
WHITE, RED = (255, 255, 255), (255, 0, 0)


def _encode(image: Image.Image, format: str, **params) -> bytes:
    buffer = io.BytesIO()
    if "append_images" in params:  # a saved image keeps its encoder settings, so every save gets fresh copies
        params["append_images"] = [frame.copy() for frame in params["append_images"]]
    image.copy().save(buffer, format, **params)
    return buffer.getvalue()


def _animated_gif(colours: list[str], size: tuple[int, int] = (10, 8)) -> bytes:
    frames = [Image.new("RGB", size, colour) for colour in colours]
    return _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def _rgba_with_transparent_corner() -> Image.Image:
    image = Image.new("RGBA", (4, 3), (*RED, 255))
    image.putpixel((0, 0), (0, 0, 255, 0))
    return image


def _palette_with_transparent_index() -> bytes:
    image = Image.new("P", (4, 3), 1)
    image.putpalette([0, 0, 0, *RED])
    image.putpixel((0, 0), 0)
    return _encode(image, "PNG", transparency=0)


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


PHOTO = photo("astronaut").crop((0, 0, 300, 200))
BILEVEL_3000 = png_bytes(Image.new("1", (3000, 3000)))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (jpeg_bytes(PHOTO), ImageFacts(width=300, height=200, format="JPEG", mode="RGB", frames=1)),
        (png_bytes(PHOTO.convert("L")), ImageFacts(width=300, height=200, format="PNG", mode="L", frames=1)),
        (
            png_bytes(_rgba_with_transparent_corner()),
            ImageFacts(width=4, height=3, format="PNG", mode="RGBA", frames=1),
        ),
        (_animated_gif(["red", "green", "blue"]), ImageFacts(width=10, height=8, format="GIF", mode="P", frames=3)),
    ],
    ids=["jpeg", "grey-png", "rgba-png", "animated-gif"],
)
def test_inspect_reports_facts(data, expected):
    assert inspect_image(data, LIMIT, BUDGET) == expected


@pytest.mark.parametrize("function", [inspect_image, decode_image])
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", r"^empty object \(0 bytes\)$"),
        (np.random.default_rng(0).bytes(4096), r"^not an image"),
        (_truncated(jpeg_bytes(PHOTO)), r"^truncated or corrupt image data: OSError: "),
        (_truncated(png_bytes(noise_image(1))), r"^truncated or corrupt image data: OSError: "),
        (
            _encode(Image.fromarray(np.zeros((8, 8), dtype=np.float32)), "TIFF"),
            r"^floating-point data \(mode 'F', such as a depth map or an HDR export\) has no display range; "
            r"save it as an 8- or 16-bit image$",
        ),
        (
            _encode(Image.fromarray(np.array([[-5, 0], [7, 9]], dtype=np.int32)), "TIFF"),
            r"^signed integer data with negative values \(mode 'I', down to -5\) is a data array, not a "
            r"photograph; save it as an 8- or 16-bit image$",
        ),
        (
            _encode(Image.fromarray(np.array([[70_000, 0], [7, 9]], dtype=np.int32)), "TIFF"),
            r"^32-bit integer levels up to 70000 \(mode 'I'\) are neither 16-bit nor full-range 32-bit data, so "
            r"their brightness is unknown; save it as an 8- or 16-bit image$",
        ),
        (_encode(Image.new("LAB", (8, 8)), "TIFF"), r"^unsupported colour mode 'LAB'$"),
    ],
    ids=[
        "empty",
        "random-bytes",
        "truncated-jpeg",
        "truncated-png",
        "float-tiff",
        "negative-int-tiff",
        "17-bit-int-tiff",
        "lab-tiff",
    ],
)
def test_unusable_bytes_are_rejected_with_a_reason(function, data, reason):
    with pytest.raises(ImageRejected, match=reason):
        function(data, LIMIT, BUDGET)


@pytest.mark.parametrize("function", [inspect_image, decode_image])
def test_too_many_pixels_is_rejected(function):
    assert len(BILEVEL_3000) < 5_000  # a bomb: tiny file, 9 megapixels
    with pytest.raises(ImageRejected, match=r"3000x3000 = 9,000,000 pixels exceeds the limit of 1,000,000"):
        function(BILEVEL_3000, 1_000_000, BUDGET)


def test_pixel_limit_is_checked_before_decoding():
    """Only the PNG header is present: a decoder would report truncation, the header check reports the size."""
    with pytest.raises(ImageRejected, match="exceeds the limit"):
        inspect_image(BILEVEL_3000[:64], 1_000_000, BUDGET)


def test_pixel_limit_is_inclusive():
    assert inspect_image(BILEVEL_3000, 9_000_000, BUDGET).width == 3000
    with pytest.raises(ImageRejected):
        inspect_image(BILEVEL_3000, 8_999_999, BUDGET)


def test_decode_returns_full_resolution_rgb():
    image = decode_image(jpeg_bytes(PHOTO), LIMIT, BUDGET)
    assert (image.mode, image.size) == ("RGB", (300, 200))


@pytest.mark.parametrize(
    ("data", "mode"),
    [
        (png_bytes(_rgba_with_transparent_corner()), "RGBA"),
        (png_bytes(_rgba_with_transparent_corner().convert("LA")), "LA"),
        (_palette_with_transparent_index(), "P"),
    ],
    ids=["rgba", "la", "palette-with-transparency"],
)
def test_transparent_images_keep_their_mode_and_the_colours_under_transparency(data, mode):
    """Each model converts them to RGB as its upstream code does, which keeps what is stored under transparent
    pixels (blue, its grey, the palette's black here): nothing is composited on the way."""
    image = decode_image(data, LIMIT, BUDGET)
    assert image.mode == mode
    stored = Image.open(io.BytesIO(data)).convert("RGB")
    assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(stored))
    assert image.convert("RGB").getpixel((0, 0)) != WHITE


def test_cmyk_jpeg_keeps_its_mode_and_converts_to_matching_rgb():
    image = decode_image(jpeg_bytes(PHOTO.convert("CMYK"), quality=95), LIMIT, BUDGET)
    assert (image.mode, image.size) == ("CMYK", PHOTO.size)
    difference = np.abs(np.asarray(image.convert("RGB"), dtype=np.int16) - np.asarray(PHOTO, dtype=np.int16))
    assert difference.mean() < 8


def test_grey_stays_grey():
    image = decode_image(png_bytes(Image.new("L", (5, 5), 77)), LIMIT, BUDGET)
    assert (image.mode, image.getpixel((2, 2))) == ("L", 77)


# --- 16- and 32-bit integer greyscale: scaled to 8 bits ---------------------------------------------

CAMERA = np.asarray(photo("camera").convert("L"))
INT32_STEP = (2**31 - 1) // 255  # 8-bit levels spread over mode "I"'s 31 bits


def _png16(levels: np.ndarray) -> bytes:
    """A 16-bit greyscale PNG written byte by byte from the PNG specification (big-endian samples, no filter),
    not by Pillow's encoder."""
    height, width = levels.shape
    rows = b"".join(b"\x00" + levels[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


SIXTEEN_BIT_FILES = {
    "png-I;16": _png16(CAMERA.astype(np.uint16) * 257),
    "tiff-I;16B": _encode(Image.fromarray((CAMERA.astype(np.uint16) * 257).astype(">u2")), "TIFF"),
    "pgm-I": _encode(Image.fromarray(CAMERA.astype(np.int32) * 257), "PPM"),
    "tiff-I-32-bit": _encode(Image.fromarray(CAMERA.astype(np.int32) * INT32_STEP), "TIFF"),
}


@pytest.mark.parametrize(("name", "stored_mode"), [("png-I;16", "I;16"), ("tiff-I;16B", "I;16B"), ("pgm-I", "I"),
                                                    ("tiff-I-32-bit", "I")])  # fmt: skip
def test_integer_greyscale_is_scaled_to_the_8_bit_photograph(name, stored_mode):
    data = SIXTEEN_BIT_FILES[name]
    assert Image.open(io.BytesIO(data)).mode == stored_mode
    assert inspect_image(data, LIMIT, BUDGET).mode == stored_mode  # ingest records the mode as stored
    image = decode_image(data, LIMIT, BUDGET)
    assert image.mode == "L"
    assert np.array_equal(np.asarray(image), CAMERA)


def test_sixteen_bit_levels_round_to_the_nearest_8_bit_level():
    levels = np.array([[0, 128, 129, 257, 32896, 65279, 65535]], dtype=np.uint16)
    image = decode_image(_png16(levels), LIMIT, BUDGET)
    assert np.asarray(image).tolist() == [[0, 0, 1, 1, 128, 254, 255]]


def test_animated_gif_decodes_its_first_frame():
    assert decode_image(_animated_gif(["red", "green"]), LIMIT, BUDGET).convert("RGB").getpixel((0, 0)) == RED


# --- poison files: whatever a decoder raises rejects that one image -------------------------------


def dds_with_unknown_pixel_format_flags() -> bytes:
    """A DDS whose pixel format flags (offset 80) name no format Pillow knows."""
    data = bytearray(_encode(Image.new("RGB", (8, 8), "green"), "DDS"))
    struct.pack_into("<I", data, 80, 0x00080000)
    return bytes(data)


def test_tiff_whose_second_page_has_no_width_is_rejected_naming_the_error():
    data = tiff_whose_second_page_has_no_width()
    with pytest.raises(TypeError):  # what Pillow does with it: the reported poison file
        _ = Image.open(io.BytesIO(data)).n_frames
    with pytest.raises(ImageRejected, match=r"^cannot count its frames: TypeError: Missing dimensions$"):
        inspect_image(data, LIMIT, BUDGET)


@pytest.mark.parametrize("function", [inspect_image, decode_image])
def test_dds_with_unknown_pixel_format_is_rejected_naming_the_error(function):
    data = dds_with_unknown_pixel_format_flags()
    with pytest.raises(NotImplementedError):  # what Pillow does with it: the reported poison file
        Image.open(io.BytesIO(data))
    with pytest.raises(
        ImageRejected, match=r"^unreadable image header: NotImplementedError: Unknown pixel format flags"
    ):
        function(data, LIMIT, BUDGET)


FUZZ_LIMIT = 4_000_000  # headers edited to claim large sizes stay cheap to allocate
MUTANTS_PER_SEED = 100
# Formats Pillow registers for saving but cannot write without a plug-in of one's own.
STUB_FORMATS = {"BUFR", "GRIB", "HDF5", "WMF"}


def _fuzz_seeds() -> dict[str, list[bytes]]:
    """Small valid files of every format Pillow can both write and read, in several modes and codings."""
    rng = np.random.default_rng(7)
    base = Image.fromarray(rng.integers(0, 255, (16, 24, 3), dtype=np.uint8))
    rgba = base.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(base.size))
    frames = [base, base.rotate(90), base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    grey, bilevel, palette = base.convert("L"), base.convert("1"), base.quantize(16)
    seeds = {
        "JPEG": [
            _encode(base, "JPEG"),
            _encode(base, "JPEG", progressive=True),
            _encode(grey, "JPEG"),
            _encode(base.convert("CMYK"), "JPEG"),
        ],
        "MPO": [_encode(frames[0], "MPO", save_all=True, append_images=frames[1:])],
        "PNG": [
            _encode(base, "PNG"),
            _encode(rgba, "PNG"),
            _encode(palette, "PNG", transparency=0),
            _encode(Image.fromarray(np.arange(384, dtype=np.uint16).reshape(16, 24) * 100), "PNG"),
            _encode(frames[0], "PNG", save_all=True, append_images=frames[1:]),
        ],
        "GIF": [_encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)],
        "TIFF": [
            _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:]),
            _encode(base, "TIFF", compression="tiff_lzw"),
            _encode(rgba, "TIFF", compression="tiff_adobe_deflate"),
            _encode(base, "TIFF", compression="jpeg"),
            _encode(grey, "TIFF", compression="packbits"),
            _encode(bilevel, "TIFF", compression="group4"),
        ],
        "WEBP": [
            _encode(base, "WEBP"),
            _encode(rgba, "WEBP", lossless=True),
            _encode(frames[0], "WEBP", save_all=True, append_images=frames[1:]),
        ],
        "BMP": [_encode(base, "BMP"), _encode(palette, "BMP"), _encode(bilevel, "BMP")],
        "DIB": [_encode(base, "DIB")],
        "ICO": [_encode(base, "ICO", sizes=[(16, 16), (24, 24)])],
        "ICNS": [_encode(base.resize((32, 32)), "ICNS")],
        "TGA": [_encode(base, "TGA"), _encode(rgba, "TGA", compression="tga_rle")],
        "PCX": [_encode(base, "PCX")],
        "PPM": [_encode(base, "PPM"), _encode(grey, "PPM"), _encode(bilevel, "PPM")],
        "DDS": [
            _encode(rgba, "DDS"),
            _encode(base, "DDS", pixel_format="DXT1"),
            _encode(rgba, "DDS", pixel_format="DXT5"),
        ],
        "QOI": [_encode(rgba, "QOI")],
        "SGI": [_encode(base, "SGI")],
        "IM": [_encode(base, "IM")],
        "MSP": [_encode(bilevel, "MSP")],
        "BLP": [_encode(palette, "BLP")],
        "XBM": [_encode(bilevel, "XBM")],
        "EPS": [_encode(base, "EPS")],
        "SPIDER": [_encode(base.convert("F"), "SPIDER")],
    }
    if features.check("jpg_2000"):
        seeds["JPEG2000"] = [_encode(base, "JPEG2000"), _encode(base, "JPEG2000", no_jp2=True)]
    if features.check("avif"):
        seeds["AVIF"] = [_encode(base, "AVIF")]
    return seeds


INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFF)
INTERESTING_WORDS = (0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)
HEADER_ZONE = 256


def _edit_png_chunk(data: bytes, rng: np.random.Generator) -> bytes:
    """Change a byte of one chunk (and maybe cut it short), with a correct CRC so decoders act on it."""
    chunks, position = [], 8
    while position + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks.append((position, length, kind))
        position += 12 + length
    position, length, kind = chunks[rng.integers(len(chunks))]
    body = bytearray(data[position + 8 : position + 8 + length])
    if body:
        body[rng.integers(len(body))] = int(rng.choice([*INTERESTING_BYTES, int(rng.integers(256))]))
    if rng.random() < 0.3:
        body = body[: rng.integers(len(body) + 1)]
    chunk = struct.pack(">I4s", len(body), kind) + body + struct.pack(">I", zlib.crc32(kind + body))
    return data[:position] + chunk + data[position + 12 + length :]


def _mutant(data: bytes, rng: np.random.Generator) -> bytes:
    """One random mutation: bit flips, truncation, header byte or word edits, a cut, a repeat, a PNG chunk edit."""
    mutated = bytearray(data)
    operation = int(rng.integers(7 if data.startswith(b"\x89PNG") else 6))
    if operation == 0:
        for _ in range(rng.integers(1, 9)):
            mutated[rng.integers(len(mutated))] ^= 1 << int(rng.integers(8))
    elif operation == 1:
        mutated = mutated[: rng.integers(1, len(mutated))]
    elif operation == 2:
        for _ in range(rng.integers(1, 5)):
            mutated[rng.integers(min(len(mutated), HEADER_ZONE))] = int(
                rng.choice([*INTERESTING_BYTES, int(rng.integers(256))])
            )
    elif operation == 3:
        width, order = int(rng.choice([2, 4])), str(rng.choice(["<", ">"]))
        value = int(rng.choice(INTERESTING_WORDS)) & ((1 << 8 * width) - 1)
        struct.pack_into(
            order + ("H" if width == 2 else "I"),
            mutated,
            int(rng.integers(max(1, min(len(mutated), HEADER_ZONE) - width))),
            value,
        )
    elif operation == 4:
        start = rng.integers(len(mutated))
        del mutated[start : start + rng.integers(1, 64)]
    elif operation == 5:
        start, end = sorted(rng.integers(len(mutated), size=2))
        at = rng.integers(len(mutated))
        mutated[at:at] = mutated[start : end + 1]
    else:
        return _edit_png_chunk(data, rng)
    return bytes(mutated)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore")  # Pillow warns about some mutants (corrupt EXIF, ...): not what is tested
def test_mutated_files_of_every_format_raise_nothing_but_image_rejected():
    seeds = _fuzz_seeds()
    Image.init()
    assert set(seeds) >= (set(Image.SAVE) & set(Image.OPEN)) - STUB_FORMATS, "a format Pillow writes has no seed"
    cases = [
        (f"{format}[{variant}]#{index}", _mutant(data, np.random.default_rng([variant, index, len(data)])))
        for format, variants in seeds.items()
        for variant, data in enumerate(variants)
        for index in range(MUTANTS_PER_SEED)
    ]
    budget = PixelBudget(FUZZ_LIMIT)

    def outcome(case: tuple[str, bytes]) -> tuple[str, str, str]:
        name, data = case
        results = []
        for function in (inspect_image, decode_image):
            try:
                function(data, FUZZ_LIMIT, budget)
                results.append("decoded")
            except ImageRejected:
                results.append("rejected")
            except Exception as error:
                results.append(f"escaped {type(error).__name__}: {error}")
        return name, *results

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(outcome, cases))
    escaped = [outcome for outcome in outcomes if any(result.startswith("escaped") for result in outcome[1:])]
    assert not escaped, escaped[:10]
    # What validation accepts, scoring can decode: it never meets a file ingest let through and then fails.
    assert not [name for name, inspected, decoded in outcomes if inspected == "decoded" and decoded != "decoded"]
    counts = Counter(inspected for _, inspected, _ in outcomes)
    assert len(cases) >= 4000 and min(counts["decoded"], counts["rejected"]) > len(cases) // 10, counts


# --- validation runs in worker processes: a hanging or crashing decoder costs one image ------------


@pytest.fixture(scope="module")
def near_limit_png() -> bytes:
    """A 7999x7999 RGB PNG of one colour: 200 KB that decode to 64 million pixels (about a second's work)."""
    return _encode(Image.new("RGB", (7999, 7999), (90, 120, 200)), "PNG")


@pytest.mark.slow
def test_a_decode_running_past_the_time_limit_rejects_that_image_only(near_limit_png):
    with pytest.raises(ImageRejected, match=r"^decoding took longer than 0.05 s \(hanging decoder\?\)$"):
        inspect_image(near_limit_png, 64_000_000, BUDGET, timeout_seconds=0.05)
    assert inspect_image(jpeg_bytes(PHOTO), LIMIT, BUDGET).width == 300


def _validation_workers() -> list[psutil.Process]:
    """The processes the validation pool forked from this process's forkserver."""
    servers = [child for child in psutil.Process().children() if "forkserver" in " ".join(child.cmdline())]
    return [worker for server in servers for worker in server.children()]


@pytest.mark.slow
def test_a_decoder_that_crashes_rejects_that_image_only(near_limit_png):
    inspect_image(jpeg_bytes(PHOTO), LIMIT, BUDGET)  # the pool is up
    idle = max(worker.memory_info().rss for worker in _validation_workers())
    with ThreadPoolExecutor(1) as pool:
        inspecting = pool.submit(inspect_image, near_limit_png, 64_000_000, BUDGET)
        deadline = time.monotonic() + 10
        # A worker 40 MB above idle has decoded a sixth of the bomb's 256 MB of pixels, far from done.
        while not (
            busy := [worker for worker in _validation_workers() if worker.memory_info().rss > idle + 40_000_000]
        ):
            assert time.monotonic() < deadline, "no validation worker started decoding"
            time.sleep(0.005)
        os.kill(busy[0].pid, signal.SIGKILL)  # as a segfault in the decoder would end it
        with pytest.raises(ImageRejected, match=r"^the decoder crashed \(worker exit code -9\)$"):
            inspecting.result(timeout=30)
    assert inspect_image(jpeg_bytes(PHOTO), LIMIT, BUDGET).width == 300


def test_validation_goes_on_after_its_idle_workers_die():
    """pebble gives up on a pool whose workers die idle (say, killed by an operator or the OOM killer)."""
    inspect_image(jpeg_bytes(PHOTO), LIMIT, BUDGET)
    workers = _validation_workers()
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    psutil.wait_procs(workers, timeout=10)
    time.sleep(0.5)  # pebble notices the deaths
    assert inspect_image(jpeg_bytes(PHOTO), LIMIT, BUDGET).width == 300


# --- bounded memory: a budget of decoded pixels, and large images kept at the size models need -----


def _started(work, seconds: float) -> threading.Thread:
    """`work` started on a thread and given `seconds`; the caller looks whether it is still waiting."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread


def test_budget_queues_requests_in_order_and_lets_an_oversized_one_run_alone():
    budget = PixelBudget(100)
    admitted: list[str] = []

    def hold(name: str, pixels: int, release: threading.Event) -> None:
        with budget.holding(pixels):
            admitted.append(name)
            release.wait(10)

    first_done, big_done, small_done = threading.Event(), threading.Event(), threading.Event()
    _started(lambda: hold("first", 60, first_done), 0.5)
    big = _started(lambda: hold("big", 500, big_done), 0.5)
    small = _started(lambda: hold("small", 30, small_done), 0.5)  # would fit beside "first", but "big" is ahead
    assert admitted == ["first"]
    first_done.set()
    big_done.set()
    small_done.set()
    big.join(5)
    small.join(5)
    assert admitted == ["first", "big", "small"]


@pytest.mark.parametrize("function", [inspect_image, decode_image])
def test_decoding_waits_for_room_in_the_budget(function):
    budget = PixelBudget(1_000_000)
    results: list[object] = []
    with budget.holding(1_000_000):
        decoding = _started(lambda: results.append(function(png_bytes(PHOTO), LIMIT, budget)), 0.5)
        assert decoding.is_alive() and not results, "decoded while the budget was full"
    decoding.join(30)
    assert results and results[0].width == 300


def test_images_up_to_native_pixels_decode_exactly_as_stored():
    image = noise_image(3, 2048)
    assert image.width * image.height == NATIVE_PIXELS
    decoded = decode_image(png_bytes(image), NATIVE_PIXELS, BUDGET)
    assert NATIVE_SIZE not in decoded.info and NATIVE_CENTRE not in decoded.info
    assert np.array_equal(np.asarray(decoded), np.asarray(image))


@pytest.mark.parametrize(
    ("size", "factor", "reduced"),
    [
        ((4100, 3000), 2, (2050, 1500)),  # a camera photo: halved, short side still over 1024
        ((2049, 2049), 2, (1025, 1025)),  # just over the native limit
        ((5000, 5000), 3, (1667, 1667)),  # 3 or 4 keep the short side over 1024; 3 divides the 512-px copy's 9
        ((20000, 300), 2, (10000, 150)),  # a strip: halved to fit NATIVE_PIXELS, whatever its short side
    ],
)
def test_larger_images_are_reduced_keeping_native_size_and_centre(size, factor, reduced):
    stored = Image.merge(
        "RGB",
        [Image.linear_gradient("L").resize(size), Image.radial_gradient("L").resize(size), Image.new("L", size, 9)],
    )
    stored.paste(
        noise_image(0, 700), ((size[0] - 700) // 2, (size[1] - 700) // 2)
    )  # native detail where the centre crop is
    decoded = decode_image(_encode(stored, "PNG", compress_level=1), 64_000_000, BUDGET)
    assert decoded.size == reduced and decoded.width * decoded.height <= NATIVE_PIXELS
    assert native_size(decoded) == size
    assert np.array_equal(np.asarray(native_centre(decoded)), np.asarray(native_centre(stored)))
    assert np.array_equal(np.asarray(decoded), np.asarray(stored.reduce(factor)))


def _large(mode: str) -> Image.Image:
    """A 2100x2100 image (just over NATIVE_PIXELS: reduced by 2) in `mode`, from a real photograph."""
    image = photo("astronaut").resize((2100, 2100))
    if mode == "P+transparency":
        image = image.quantize(32)
        image.info["transparency"] = 3
    elif mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    elif mode == "RGBA":
        image.putalpha(Image.linear_gradient("L").resize(image.size))
    else:
        image = image.convert(mode)
    return image


@pytest.mark.parametrize(
    ("stored", "reduced_as"),
    [("1", "L"), ("P", "RGB"), ("P+transparency", "RGBA"), ("RGBA", "RGBA"), ("LA", "LA"), ("CMYK", "CMYK"),
     ("I;16", "L")],
)  # fmt: skip
def test_large_images_are_reduced_in_a_mode_whose_pixels_average(stored, reduced_as):
    """Palette indices and single bits cannot be averaged: such images are reduced as the colours they stand for."""
    image = _large(stored)
    data = _encode(
        image, "TIFF" if stored == "CMYK" else "PNG", **({"transparency": 3} if stored.startswith("P+") else {})
    )
    decoded = decode_image(data, 64_000_000, BUDGET)
    expected = Image.open(io.BytesIO(data))
    if stored == "I;16":
        expected = Image.fromarray((np.asarray(expected) // 257).astype(np.uint8))  # the levels are multiples of 257
    else:
        expected = expected.convert(reduced_as)
    assert decoded.mode == reduced_as and native_size(decoded) == image.size
    if reduced_as in ("RGBA", "LA"):  # straight averages: the colour under transparent pixels survives
        stored_rgb = Image.open(io.BytesIO(data)).convert("RGB")
        assert np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(stored_rgb.reduce(2)))
        assert np.array_equal(np.asarray(decoded.getchannel("A")), np.asarray(expected.getchannel("A").reduce(2)))
    else:
        assert np.array_equal(np.asarray(decoded), np.asarray(expected.reduce(2)))
    assert np.array_equal(np.asarray(native_centre(decoded)), np.asarray(native_centre(expected)))


def test_reduced_images_keep_twice_every_models_input_side():
    largest = max(model.input_side for model in (*SCORERS.values(), *EMBEDDERS.values()))
    assert 2 * largest <= REDUCED_MIN_SIDE


MEMORY_PROBE = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
from aesq.core.images import PixelBudget, decode_image
import aesq.models.base  # loaded before the baseline, as in a scoring worker
data, budget = open(sys.argv[1], "rb").read(), PixelBudget(int(sys.argv[2]))
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with ThreadPoolExecutor(6) as pool:
    sizes = set(pool.map(lambda _: decode_image(data, 64_000_000, budget).size, range(6)))
print(sizes, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) * 1024)
"""


@pytest.mark.slow
def test_six_threads_decoding_near_limit_pngs_hold_about_one_at_a_time(near_limit_png, tmp_path):
    """Six threads decode 7999x7999 PNGs (256 MB of pixels each) under the default budget of 64 million
    pixels: the peak is one decode's pixels, where six at once would need about 1.5 GB."""
    path = tmp_path / "near-limit.png"
    path.write_bytes(near_limit_png)
    probe = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path), "64000000"], capture_output=True, text=True, check=True
    )
    sizes, growth = probe.stdout.strip().rsplit(" ", 1)
    assert sizes == "{(1600, 1600)}"
    assert int(growth) < 450_000_000, f"peak RSS grew by {int(growth) / 1e6:.0f} MB"
