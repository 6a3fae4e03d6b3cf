"""The weight-free `technical` scorer against BRISQUE on graded distortions, side by side in one run.

Each source image (scikit-image's photographs and a few generated scenes, shrunk to a 512-px long side) is
distorted at five growing levels of each kind (blur, noise, JPEG, pixelation, dimming); with the original as
level 0 that is a series of six. A faithful scorer ranks each series in level order, so per series we take the
Spearman correlation between level and quality (-SRCC: 1 = always falling) and the share of the series'
15 pairs it orders the right way (ties count half). BRISQUE (the `brisque` package and its shipped
LIVE-trained SVM, a benchmark-only dependency: `pip install "brisque[opencv-python-headless]"`) gives lower
numbers to better images, so its quality is minus its score. Speed: images per second of each, scoring the
same decoded images one at a time in this process.

    .venv/bin/python bench/baseline_iqa.py --out bench/out/baseline_iqa
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageDraw, ImageFilter
from scipy import stats

from aesq.models.technical import TechnicalQualityScorer

ROOT = Path(__file__).resolve().parents[1]
# scikit-image's photographs: portraits, objects, a night sky, a micrograph, and textures (grass, brick) that a
# noise measure must not take for grain.
PHOTOGRAPHS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "coins",
    "grass", "brick",
)  # fmt: skip
LONG_SIDE = 512
LEVELS = 5
# Severity of each kind of distortion at levels 1..5.
SEVERITIES: dict[str, tuple[float, ...]] = {
    "blur": (0.6, 1.2, 2.0, 3.0, 4.5),  # Gaussian sigma, px
    "noise": (3.0, 6.0, 10.0, 15.0, 22.0),  # Gaussian sigma, 8-bit levels
    "jpeg": (70, 45, 25, 12, 5),  # JPEG quality
    "pixelation": (2, 3, 4, 6, 8),  # block side, px
    "dimming": (0.8, 0.62, 0.46, 0.32, 0.2),  # brightness factor
}
# A second set reaching further (`--harsh`): degradations of the strength common in IQA data sets' worst levels.
HARSH_SEVERITIES: dict[str, tuple[float, ...]] = {
    "blur": (1.0, 2.0, 3.5, 5.0, 8.0),
    "noise": (5.0, 12.0, 20.0, 30.0, 45.0),
    "jpeg": (50, 30, 18, 10, 3),
    "pixelation": (2, 4, 6, 10, 16),
    "dimming": (0.7, 0.5, 0.35, 0.25, 0.15),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photographs", type=int, default=len(PHOTOGRAPHS), help="how many of scikit-image's")
    parser.add_argument("--scenes", type=int, default=3, help="how many generated scenes")
    parser.add_argument("--harsh", action="store_true", help="the harsher set of levels (HARSH_SEVERITIES)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "baseline_iqa")
    return parser.parse_args(argv)


def _shrunk(image: Image.Image) -> Image.Image:
    """RGB, long side at most LONG_SIDE."""
    image = image.convert("RGB")
    scale = LONG_SIDE / max(image.size)
    if scale < 1:
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    return image


def _scene(seed: int) -> Image.Image:
    """A generated scene: a lit gradient sky, textured ground and a few sharp-edged shapes."""
    rng = np.random.default_rng(seed)
    height, width = 384, 512
    y = np.linspace(0, 1, height)[:, None, None]
    sky = np.array(rng.uniform(90, 220, 3)) * (1 - 0.5 * y) + np.array(rng.uniform(20, 90, 3)) * y
    pixels = np.broadcast_to(sky, (height, width, 3)).copy()
    ground = rng.normal(0, 18, (height // 2, width, 1)) + np.array(rng.uniform(40, 140, 3))
    pixels[height // 2 :] = np.clip(ground, 0, 255)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 80)), int(rng.integers(0, height - 80))
        size = int(rng.integers(30, 120))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x0 + size, y0 + size), fill=colour)
    return image


def sources(photographs: int, scenes: int) -> dict[str, Image.Image]:
    """The undistorted images by name."""
    found = {name: _shrunk(Image.fromarray(getattr(skimage.data, name)())) for name in PHOTOGRAPHS[:photographs]}
    return found | {f"scene-{seed}": _scene(seed) for seed in range(scenes)}


def distorted(image: Image.Image, kind: str, severity: float, seed: int) -> Image.Image:
    """`image` with one distortion of the given severity."""
    if kind == "blur":
        return image.filter(ImageFilter.GaussianBlur(severity))
    if kind == "noise":
        noise = np.random.default_rng(seed).normal(0, severity, (image.height, image.width, 3))
        return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).round().astype(np.uint8))
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(severity))
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    if kind == "pixelation":
        side = int(severity)
        small = image.resize((max(1, image.width // side), max(1, image.height // side)), Image.Resampling.BOX)
        return small.resize(image.size, Image.Resampling.NEAREST)
    if kind == "dimming":
        return Image.fromarray((np.asarray(image, dtype=np.float64) * severity).round().astype(np.uint8))
    raise ValueError(f"unknown distortion {kind!r}")


def _timed(score: Callable[[Image.Image], float], images: list[Image.Image]) -> tuple[list[float], float]:
    """Each image's quality, and images per second over all of them."""
    started = time.perf_counter()
    values = [score(image) for image in images]
    return values, len(images) / (time.perf_counter() - started)


def _pairwise_accuracy(quality: list[float]) -> float:
    """Share of a series' level pairs ordered right (the lower level of higher quality); ties count half."""
    pairs = list(itertools.combinations(range(len(quality)), 2))
    right = sum(1.0 if quality[a] > quality[b] else 0.5 if quality[a] == quality[b] else 0.0 for a, b in pairs)
    return right / len(pairs)


def _minus_srcc(quality: list[float]) -> float:
    """-SRCC between level and quality; a series of equal values (no order at all) counts 0."""
    rho = stats.spearmanr(range(len(quality)), quality).statistic
    return 0.0 if np.isnan(rho) else -float(rho)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from brisque import BRISQUE  # benchmark-only dependency

    originals = sources(args.photographs, args.scenes)
    severities = HARSH_SEVERITIES if args.harsh else SEVERITIES
    series = {
        (name, kind): [image] + [distorted(image, kind, severity, seed) for seed, severity in enumerate(levels)]
        for name, image in originals.items()
        for kind, levels in severities.items()
    }
    images = [image for chain in series.values() for image in chain]

    class Brisque(BRISQUE):
        """brisque 0.2 with numpy 2: some fitted features come as one-element arrays, which `float()` refuses."""

        def scale_features(self, features):
            return super().scale_features(
                [np.asarray(feature, dtype=np.float64).reshape(-1)[0] for feature in features]
            )

    technical = TechnicalQualityScorer()
    brisque = Brisque(url=False)
    scorers: dict[str, Callable[[Image.Image], float]] = {
        "technical": lambda image: technical.score([image])[0].value,
        "brisque": lambda image: -float(brisque.score(np.asarray(image))),
    }
    quality: dict[str, list[float]] = {}
    speed: dict[str, float] = {}
    for name, score in scorers.items():
        quality[name], speed[name] = _timed(score, images)

    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name in scorers:
        values = iter(quality[name])
        per_series = {key: [next(values) for _ in chain] for key, chain in series.items()}
        rows[name] = {
            kind: {
                "minus_srcc": statistics.mean(_minus_srcc(per_series[(source, kind)]) for source in originals),
                "pairwise": statistics.mean(_pairwise_accuracy(per_series[(source, kind)]) for source in originals),
            }
            for kind in severities
        }
        rows[name]["mean"] = {
            metric: statistics.mean(rows[name][kind][metric] for kind in severities)
            for metric in ("minus_srcc", "pairwise")
        }

    result = {
        "benchmark": "baseline_iqa",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["bench/baseline_iqa.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": f"{platform.node()}: {os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}",
        "sources": list(originals),
        "severities": severities,
        "images": len(images),
        "images_per_second": speed,
        "speed_ratio": speed["technical"] / speed["brisque"],
        "results": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"{len(originals)} sources x {len(severities)} distortions x {LEVELS + 1} levels = {len(images)} images")
    print(f"{'':12}" + "".join(f"{name:>22}" for name in scorers))
    for kind in (*severities, "mean"):
        cells = (f"{rows[name][kind]['minus_srcc']:.3f} / {rows[name][kind]['pairwise']:.3f}" for name in scorers)
        print(f"{kind:12}" + "".join(f"{cell:>22}" for cell in cells))
    print(f"{'images/s':12}" + "".join(f"{speed[name]:>22.1f}" for name in scorers))
    print(f"-SRCC / pairwise accuracy; technical is {result['speed_ratio']:.1f}x BRISQUE's images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
