"""The demo sample: real photographs from scikit-image, rendered as three versions of a made-up generator.

Each version "generates" every photograph with its own typical quality, so the comparison that the
spine prints has a known answer: v2.0-sft > v1.1-lora > v1.0-base.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter
from skimage import data

GENERATOR = "demo-diffusion"
PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "camera",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
)


def _photo(name: str) -> Image.Image:
    """A bundled scikit-image photograph as an RGB image."""
    pixels = getattr(data, name)()
    pixels = pixels[0] if isinstance(pixels, tuple) else pixels
    return Image.fromarray(pixels).convert("RGB")


def _base(image: Image.Image) -> Image.Image:
    """The base model: soft, noisy and flat."""
    noise = np.random.default_rng(0).normal(0, 18, (image.height, image.width, 3))
    soft = ImageEnhance.Contrast(image.filter(ImageFilter.GaussianBlur(2.5))).enhance(0.6)
    return Image.fromarray(np.clip(np.asarray(soft, dtype=np.float32) + noise, 0, 255).astype(np.uint8))


def _lora(image: Image.Image) -> Image.Image:
    """A LoRA on top: sharper than the base, still a little soft."""
    return image.filter(ImageFilter.GaussianBlur(1.2))


def _sft(image: Image.Image) -> Image.Image:
    """The fine-tuned model: the clean photograph."""
    return image


VERSIONS: dict[str, tuple[str, Callable[[Image.Image], Image.Image]]] = {
    "v1.0-base": ("base", _base),
    "v1.1-lora": ("lora", _lora),
    "v2.0-sft": ("sft", _sft),
}


def build_sample(folder: Path) -> int:
    """Write the sample (images + sidecar JSON) into `folder`, replacing it; returns the image count."""
    if folder.exists():
        shutil.rmtree(folder)
    count = 0
    for seed, name in enumerate(PHOTOS):
        photo = _photo(name)
        for version, (kind, render) in VERSIONS.items():
            target = folder / "generated" / GENERATOR / version / f"{name}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            render(photo).save(target, "JPEG", quality=92)
            sidecar = {
                "prompt": f"a photograph: {name.replace('_', ' ')}",
                "seed": seed,
                "generator": {"kind": kind, **({"parent": f"{GENERATOR}:v1.0-base"} if kind != "base" else {})},
            }
            target.with_suffix(".json").write_text(json.dumps(sidecar))
            count += 1
    crawled = folder / "crawled"
    crawled.mkdir(parents=True)
    _photo("coffee").resize((300, 200)).save(crawled / "coffee-small.png")
    (crawled / "broken.jpg").write_bytes(
        (folder / "generated" / GENERATOR / "v2.0-sft" / "rocket.jpg").read_bytes()[:5000]
    )
    return count + 2
