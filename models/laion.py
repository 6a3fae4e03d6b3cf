"""LAION aesthetic predictor v2 ("improved") and the OpenAI CLIP ViT-L/14 embedder it stands on.

The predictor is a small MLP head (`sac+logos+ava1-l14-linearMSE.pth`, from
christophschuhmann/improved-aesthetic-predictor) over the L2-normalised 768-d CLIP ViT-L/14 image
embedding; it gives scores of about 1–10. Feeding the un-normalised embedding (a known pitfall)
gives 20–30, so every score also records that embedding's norm in `raw`.

Both classes share one loaded CLIP model per (checkpoint, device) in a process, and when the
embedder is asked for the very same image objects the scorer has just seen (or the other way
round), the embeddings of that batch are reused instead of running CLIP a second time.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from aesq.models.base import Embedder, Score, Scorer

CLIP_FOLDER = "clip-vit-large-patch14"
CLIP_HUB_ID = "openai/clip-vit-large-patch14"
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
EMBEDDING_DIMENSION = 768
INPUT_SIZE = 224
# OpenAI CLIP preprocessing: shortest side 224 (bicubic), centre crop 224, these mean/std.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_CLIP_MEAN = np.array(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_CLIP_STD = np.array(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)
# The published head's Linear layers by index in its nn.Sequential (Dropout at 1, 3 and 5).
HEAD_LINEARS = {0: (768, 1024), 2: (1024, 128), 4: (128, 64), 6: (64, 16), 7: (16, 1)}


class AestheticHead(nn.Module):
    """The published MLP: Linear/Dropout at the original indices, no activations."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(768, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.layers(embeddings)


def clip_pixels(image: Image.Image) -> np.ndarray:
    """OpenAI CLIP's own transform (`clip.load`'s Resize, CenterCrop, convert to RGB, ToTensor, Normalize), step
    for step on Pillow: float32 (3, 224, 224).

    The shortest side goes to 224 (bicubic, the long side truncated) in the image's own mode, so Pillow resizes
    palette and 1-bit images with nearest and premultiplies alpha; the crop offsets are rounded as torchvision
    rounds them (half to even); RGB comes last, keeping the colour under transparent pixels.
    """
    width, height = image.size
    if width <= height:
        size = (INPUT_SIZE, int(INPUT_SIZE * height / width))
    else:
        size = (int(INPUT_SIZE * width / height), INPUT_SIZE)
    resized = image if size == image.size else image.resize(size, Image.Resampling.BICUBIC)
    left, top = round((size[0] - INPUT_SIZE) / 2), round((size[1] - INPUT_SIZE) / 2)
    cropped = resized.crop((left, top, left + INPUT_SIZE, top + INPUT_SIZE)).convert("RGB")
    pixels = np.asarray(cropped, dtype=np.float32).transpose(2, 0, 1) / np.float32(255)
    return (pixels - _CLIP_MEAN) / _CLIP_STD


def clip_batch(images: Sequence[Image.Image]) -> torch.Tensor:
    """`clip_pixels` of each image, stacked: float32 (n, 3, 224, 224)."""
    return torch.from_numpy(np.stack([clip_pixels(image) for image in images]))


class _RecentBatches:
    """The results for the last few batches, found again by the identity of the batch's objects."""

    def __init__(self, size: int = 2) -> None:
        self._size = size
        self._entries: list[tuple[list[weakref.ref], object]] = []

    def get(self, items: Sequence[object]) -> object | None:
        """The result stored for exactly these objects, or None."""
        for refs, result in self._entries:
            if len(refs) == len(items) and all(ref() is item for ref, item in zip(refs, items)):
                return result
        return None

    def put(self, items: Sequence[object], result: object) -> None:
        """Remember `result` for these objects, forgetting the oldest entry when full."""
        self._entries = [*self._entries[1 - self._size :], ([weakref.ref(item) for item in items], result)]


@dataclass
class ClipEncoder:
    """One loaded CLIP ViT-L/14 vision tower with its preprocessing, shared by scorer and embedder."""

    model: nn.Module
    device: str
    dtype: torch.dtype
    forward_passes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _prepared: _RecentBatches = field(default_factory=_RecentBatches, repr=False)
    _encoded: _RecentBatches = field(default_factory=_RecentBatches, repr=False)

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP pixel values on the CPU; the same image objects get the same tensor back."""
        with self._lock:
            pixels = self._prepared.get(images)
        if pixels is None:
            pixels = clip_batch(images)
            with self._lock:
                self._prepared.put(images, pixels)
        return pixels  # type: ignore[return-value]

    def encode(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The L2-normalised image embeddings (float32, CPU, (n, 768)) and their norms before that.

        The same pixel tensor as one of the last calls reuses that call's result.
        """
        with self._lock:
            cached = self._encoded.get([pixels])
            if cached is not None:
                return cached  # type: ignore[return-value]
            with torch.inference_mode():
                output = self.model(pixel_values=pixels.to(self.device, self.dtype))
                embeds = output.image_embeds.float()
                norms = embeds.norm(dim=-1)
                normalised = torch.nn.functional.normalize(embeds, dim=-1)
            self.forward_passes += 1
            result = (normalised.cpu(), norms.cpu())
            self._encoded.put([pixels], result)
            return result


_encoders: dict[tuple[str, str], ClipEncoder] = {}
_encoders_lock = threading.Lock()


def _dtype_for(device: str) -> torch.dtype:
    """fp16 on CUDA, as upstream runs OpenAI CLIP there (`clip.load`); float32 elsewhere."""
    return torch.float16 if torch.device(device).type == "cuda" else torch.float32


@functools.cache
def _vision_model_class():
    """CLIPVisionModelWithProjection that loads quietly from a full CLIP checkpoint (text tower skipped)."""
    from transformers import CLIPVisionModelWithProjection

    class ClipVisionTower(CLIPVisionModelWithProjection):
        # A full CLIPModel snapshot (such as openai/clip-vit-large-patch14) also holds the text tower.
        # transformers declares this a list attribute of the model, so it cannot be a ClassVar here.
        _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$"]  # noqa: RUF012

    return ClipVisionTower


def _load_vision_model(source: str | Path, dtype: torch.dtype, folder: Path | None) -> nn.Module:
    """The CLIP vision tower with projection from a local folder or the local HF cache; never downloads.

    `folder` is where a checkpoint folder was looked for (named in the error when none is found).
    """
    load = _vision_model_class().from_pretrained
    if isinstance(source, Path):
        if not (source / "config.json").is_file():
            raise ValueError(
                f"CLIP checkpoint folder {source} has no config.json: expected a save_pretrained / "
                f"Hugging Face snapshot folder of {CLIP_HUB_ID} (config.json and model.safetensors)"
            )
        where = str(source)
        try:
            model, info = load(where, local_files_only=True, dtype=dtype, output_loading_info=True)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as error:
            raise ValueError(
                f"cannot load a CLIP vision model from {source} (expected a save_pretrained / "
                f"Hugging Face snapshot folder of {CLIP_HUB_ID}): {error}"
            ) from error
    else:
        where = f"{source} (Hugging Face cache)"
        try:
            model, info = load(source, local_files_only=True, dtype=dtype, output_loading_info=True)
        except OSError as error:
            raise FileNotFoundError(
                f"CLIP ViT-L/14 weights not found: put a save_pretrained / Hugging Face snapshot folder of "
                f"{CLIP_HUB_ID} at {folder if folder is not None else f'<weights_dir>/{CLIP_FOLDER}'}, or have "
                f"{source} in the local Hugging Face cache (nothing is downloaded)"
            ) from error
    # from_pretrained fills absent weights with random ones and only warns: refuse that here.
    absent = sorted(set(info.get("missing_keys", ())) | {key[0] for key in info.get("mismatched_keys", ())})
    if absent:
        raise ValueError(f"CLIP checkpoint {where} lacks weights {absent[:5]}{' …' if len(absent) > 5 else ''}")
    config = model.config
    if config.projection_dim != EMBEDDING_DIMENSION or config.image_size != INPUT_SIZE:
        raise ValueError(
            f"CLIP checkpoint {where} has projection_dim {config.projection_dim} and image_size "
            f"{config.image_size}; CLIP ViT-L/14 has {EMBEDDING_DIMENSION} and {INPUT_SIZE}"
        )
    return model


def shared_clip(weights_dir: Path | None, device: str) -> ClipEncoder:
    """The process-wide CLIP ViT-L/14 for this weights folder and device, loaded on first use.

    `weights_dir / "clip-vit-large-patch14"` is used when it exists, else the local HF cache.
    """
    folder = weights_dir / CLIP_FOLDER if weights_dir is not None else None
    source: str | Path = folder.resolve() if folder is not None and folder.exists() else CLIP_HUB_ID
    key = (str(source), str(torch.device(device)))
    with _encoders_lock:
        if key not in _encoders:
            dtype = _dtype_for(device)
            model = _load_vision_model(source, dtype, folder).eval().to(device)
            _encoders[key] = ClipEncoder(model=model, device=device, dtype=dtype)
        return _encoders[key]


def load_head(path: Path) -> AestheticHead:
    """The published MLP head from `path`, checked strictly against the published layout."""
    if not path.is_file():
        raise FileNotFoundError(
            f"LAION aesthetic head not found at {path}: put {HEAD_FILE} "
            "(christophschuhmann/improved-aesthetic-predictor) in the weights folder"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated file, an HTML page, a pickle with code in it, …
        raise ValueError(f"cannot read the LAION aesthetic head {path} as a torch state dict: {error}") from error
    if not isinstance(state, dict):
        raise ValueError(f"LAION aesthetic head {path} holds a {type(state).__name__}, expected a state dict")
    head = AestheticHead()
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ValueError(
            f"LAION aesthetic head {path} does not have the published layout (layers.0/2/4/6/7 Linear "
            f"768→1024→128→64→16→1 with biases): {error}"
        ) from error
    return head.float().eval()


class LaionAestheticV2Scorer(Scorer):
    """LAION improved aesthetic predictor (v2, sac+logos+ava1 L14 linearMSE): about 1–10."""

    name = "laion-aes-v2"
    input_side = INPUT_SIZE
    version = "3"  # 2 converted to RGB before resizing, composited transparency on white, cropped offsets floored

    def setup(self) -> None:
        """Load the head, then CLIP (shared with the `clip-vit-l-14` embedder)."""
        if self.weights_dir is None:
            raise FileNotFoundError(f"LAION aesthetic v2 needs a weights folder holding {HEAD_FILE}")
        head = load_head(self.weights_dir / HEAD_FILE)
        self.use(head, shared_clip(self.weights_dir, self.device))

    def use(self, head: AestheticHead, clip: ClipEncoder) -> None:
        """Score with an already loaded head and CLIP encoder (`setup()` reads both from the weights
        folder; the GPU benchmark passes randomly initialised ones built in memory)."""
        self._head = head.float().eval().to(self.device)
        self._clip = clip

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP preprocessing on the CPU (`clip_pixels`; shared with the embedder for the same image objects)."""
        return self._clip.prepare(images)

    def score_prepared(self, batch: torch.Tensor) -> list[Score]:
        """Score a batch (one CLIP forward pass, shared with the embedder for the same batch).

        Args:
            batch: CLIP pixel values from `prepare()`.

        Returns:
            One `Score` per image; `raw` has the CLIP embedding's norm before normalisation.
        """
        normalised, norms = self._clip.encode(batch)
        with torch.inference_mode():
            values = self._head(normalised.to(self.device)).squeeze(1).cpu()
        return [
            Score(value=float(value), raw={"clip_embedding_norm": float(norm)})
            for value, norm in zip(values.tolist(), norms.tolist(), strict=True)
        ]


class ClipVitL14Embedder(Embedder):
    """768-d OpenAI CLIP ViT-L/14 image embeddings (projected, L2-normalised)."""

    name = "clip-vit-l-14"
    input_side = INPUT_SIZE
    dimension = EMBEDDING_DIMENSION

    def setup(self) -> None:
        """Load CLIP (shared with the `laion-aes-v2` scorer)."""
        self._clip = shared_clip(self.weights_dir, self.device)

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """CLIP preprocessing on the CPU (`clip_pixels`; shared with the scorer for the same image objects)."""
        return self._clip.prepare(images)

    def embed_prepared(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a batch.

        Args:
            batch: CLIP pixel values from `prepare()`.

        Returns:
            float32 array (batch size, 768) of unit-length rows.
        """
        normalised, _ = self._clip.encode(batch)
        return normalised.numpy().astype(np.float32, copy=True)
