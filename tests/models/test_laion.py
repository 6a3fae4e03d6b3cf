"""LAION aesthetic v2 scorer and CLIP ViT-L/14 embedder, on a tiny random CLIP of the same architecture.

The real checkpoints cannot be downloaded here, so a small randomly initialised CLIP vision tower
(with the real 768-d projection so the real-size head fits) and a random head in the published key
layout stand in for them. The expected scores are computed independently: PIL/numpy preprocessing
from the published facts, the vision tower, manual normalisation and matmuls from the state dict.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from transformers import CLIPConfig, CLIPModel, CLIPVisionModel, CLIPVisionModelWithProjection

from aesq.models import laion
from aesq.models.laion import ClipVitL14Embedder, LaionAestheticV2Scorer
from tests.helpers import (
    noise_image,
    photo,
    published_laion_head,
    save_laion_head,
    tiny_clip_config,
    transparent_sticker,
    write_tiny_clip,
)

MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
STD = np.array([0.26862954, 0.26130258, 0.27577711])
HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A weights folder: tiny CLIP in clip-vit-large-patch14/ and a random head in the published layout."""
    return write_tiny_clip(tmp_path_factory.mktemp("weights"))


@pytest.fixture(scope="module")
def scorer(weights) -> LaionAestheticV2Scorer:
    model = LaionAestheticV2Scorer(weights_dir=weights)
    model.setup()
    return model


@pytest.fixture(scope="module")
def embedder(weights) -> ClipVitL14Embedder:
    model = ClipVitL14Embedder(weights_dir=weights)
    model.setup()
    return model


def _images() -> list[Image.Image]:
    """Landscape, square and odd sizes, a portrait whose crop excess is 3 mod 4 (where OpenAI CLIP's rounded
    crop offset and a floored one differ by a pixel), a transparent image and a palette image."""
    portrait = noise_image(7, size=300).resize((448, 902))
    palette = photo("coffee").quantize(64)
    return [photo("coffee"), photo("astronaut"), photo("chelsea"), portrait, transparent_sticker(), palette]


def _reference_pixels(
    image: Image.Image, rounding=round, convert_first: bool = False, scale_first: bool = False
) -> np.ndarray:
    """OpenAI CLIP's transform from the facts: shortest side 224 bicubic in the image's own mode (long side
    `int(224 * long / short)`, torchvision's formula), centre crop 224 with torchvision's rounded offsets, then
    RGB, mean/std (`rounding`, `convert_first` and `scale_first` make the mistakes)."""
    if convert_first:
        image = image.convert("RGB")
    width, height = image.size
    short, long = sorted(image.size)
    new_long = int(long * (224 / short)) if scale_first else int(224 * long / short)
    size = (224, new_long) if width <= height else (new_long, 224)
    resized = image.resize(size, Image.BICUBIC)
    left, top = int(rounding((size[0] - 224) / 2)), int(rounding((size[1] - 224) / 2))
    crop = np.asarray(resized.crop((left, top, left + 224, top + 224)).convert("RGB"), dtype=np.float64) / 255
    return ((crop - MEAN) / STD).transpose(2, 0, 1)


def _reference(weights: Path, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unnormalised embeddings, normalised embeddings and scores, computed without aesq.models.laion."""
    vision = CLIPVisionModelWithProjection.from_pretrained(weights / "clip-vit-large-patch14").eval()
    pixels = torch.from_numpy(np.stack([_reference_pixels(image) for image in images])).float()
    with torch.no_grad():
        embeds = vision(pixel_values=pixels).image_embeds.double().numpy()
    unit = embeds / np.sqrt((embeds**2).sum(axis=1, keepdims=True))
    state = {key: value.double().numpy() for key, value in torch.load(weights / HEAD_FILE).items()}
    x = unit
    for index in (0, 2, 4, 6, 7):
        x = x @ state[f"layers.{index}.weight"].T + state[f"layers.{index}.bias"]
    return embeds, unit, x[:, 0]


def test_score_matches_an_independent_computation(scorer, weights):
    images = _images()
    embeds, _, expected = _reference(weights, images)
    norms = np.linalg.norm(embeds, axis=1)
    assert np.all(np.abs(norms - 1) > 0.05)  # so feeding un-normalised embeddings would show
    scores = scorer.score(images)
    assert len(scores) == len(images)
    np.testing.assert_allclose([score.value for score in scores], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([score.raw["clip_embedding_norm"] for score in scores], norms, rtol=1e-4)
    assert all(isinstance(score.value, float) for score in scores)


def test_batch_equals_single_and_empty_batch(scorer):
    images = _images()
    batch = [score.value for score in scorer.score(images)]
    singles = [scorer.score([image])[0].value for image in images]
    np.testing.assert_allclose(batch, singles, rtol=1e-4, atol=1e-5)
    assert scorer.score([]) == []


def test_embeddings_are_the_normalised_image_embeds(embedder, weights):
    images = _images()
    _, expected, _ = _reference(weights, images)
    vectors = embedder.embed(images)
    assert vectors.shape == (len(images), 768) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(images[1:2])[0], vectors[1], atol=1e-5)
    assert embedder.embed([]).shape == (0, 768)
    assert ClipVitL14Embedder.dimension == 768


def test_scorer_and_embedder_share_one_clip_and_one_forward_per_batch(scorer, embedder, weights):
    assert scorer._clip is embedder._clip
    again = ClipVitL14Embedder(weights_dir=weights)
    again.setup()
    assert again._clip is scorer._clip
    clip = scorer._clip
    images = _images()
    before = clip.forward_passes
    scorer.score(images)
    assert clip.forward_passes == before + 1
    embedder.embed(images)  # the same image objects: the scorer's embeddings are reused
    assert clip.forward_passes == before + 1
    embedder.embed([image.copy() for image in images])  # other objects: run again
    assert clip.forward_passes == before + 2


def test_float32_on_cpu_and_float16_on_cuda_as_upstream(scorer):
    assert scorer._clip.dtype == torch.float32 and next(scorer._clip.model.parameters()).dtype == torch.float32
    assert laion._dtype_for("cuda:0") == torch.float16 and laion._dtype_for("cpu") == torch.float32


def test_float16_path_stays_close_to_float32(scorer, weights, tmp_path, monkeypatch):
    """The CUDA dtype plumbing (fp16 weights and pixels, float32 head), exercised on the CPU."""
    shutil.copytree(weights, tmp_path, dirs_exist_ok=True)  # another folder: its own cached CLIP
    monkeypatch.setattr(laion, "_dtype_for", lambda device: torch.float16)
    half = LaionAestheticV2Scorer(weights_dir=tmp_path)
    half.setup()
    assert next(half._clip.model.parameters()).dtype == torch.float16
    images = _images()
    full_values = [score.value for score in scorer.score(images)]
    half_values = [score.value for score in half.score(images)]
    np.testing.assert_allclose(half_values, full_values, rtol=5e-3)
    full_vectors = scorer._clip.encode(scorer.prepare(images))[0].numpy()
    half_vectors = half._clip.encode(half.prepare(images))[0].numpy()
    assert half_vectors.dtype == np.float32
    assert (full_vectors * half_vectors).sum(axis=1).min() > 0.995


@pytest.mark.parametrize(
    ("image", "mistake"),
    [
        (noise_image(7, size=300).resize((448, 902)), {"rounding": math.floor}),
        (transparent_sticker(), {"convert_first": True}),
        (photo("coffee").quantize(64), {"convert_first": True}),
        (photo("coffee").convert("1"), {"convert_first": True}),
        (photo("coffee").resize((277, 554)), {"scale_first": True}),  # 554 * (224 / 277) = 447.99999…
    ],
    ids=["crop-excess-3-mod-4", "transparent", "palette", "1-bit", "long-side-formula"],
)
def test_pixels_follow_openai_clips_transform_where_shortcuts_differ(image, mistake):
    """torchvision's long side and rounded crop offsets, and resizing in the image's own mode before converting to
    RGB (Pillow resizes palette and 1-bit images with nearest, transparent ones premultiplied): each case differs
    otherwise."""
    pixels = laion.clip_pixels(image)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.float32
    np.testing.assert_allclose(pixels, _reference_pixels(image), atol=1e-5)
    assert np.abs(pixels - _reference_pixels(image, **mistake)).max() > 0.1


def test_loads_a_full_clip_snapshot(tmp_path):
    """The openai/clip-vit-large-patch14 snapshot is a whole CLIPModel (text tower too)."""
    torch.manual_seed(2)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    full = CLIPModel(CLIPConfig(text_config=text, vision_config=tiny_clip_config().to_dict(), projection_dim=768))
    full.save_pretrained(tmp_path / "clip-vit-large-patch14")
    embedder = ClipVitL14Embedder(weights_dir=tmp_path)
    embedder.setup()
    model = embedder._clip.model
    assert torch.equal(model.visual_projection.weight, full.visual_projection.weight)
    assert torch.equal(model.vision_model.post_layernorm.weight, full.vision_model.post_layernorm.weight)
    assert embedder.embed([photo("coffee")]).shape == (1, 768)


def test_missing_clip_folder_is_a_clear_error_and_nothing_is_downloaded(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    vision_class = laion._vision_model_class()
    calls = []

    def spy(cls, *args, **kwargs):
        calls.append((args, kwargs))
        return CLIPVisionModelWithProjection.from_pretrained.__func__(cls, *args, **kwargs)

    monkeypatch.setattr(vision_class, "from_pretrained", classmethod(spy))
    with pytest.raises(FileNotFoundError, match=r"clip-vit-large-patch14.*nothing is downloaded") as error:
        ClipVitL14Embedder(weights_dir=tmp_path).setup()
    assert str(tmp_path / "clip-vit-large-patch14") in str(error.value)
    assert [(args, kwargs["local_files_only"]) for args, kwargs in calls] == [
        (("openai/clip-vit-large-patch14",), True)
    ]


def test_missing_head_file_is_a_clear_error(weights, tmp_path):
    (tmp_path / "clip-vit-large-patch14").symlink_to(weights / "clip-vit-large-patch14")
    with pytest.raises(FileNotFoundError, match=r"sac\+logos\+ava1-l14-linearMSE\.pth"):
        LaionAestheticV2Scorer(weights_dir=tmp_path).setup()
    with pytest.raises(FileNotFoundError, match="weights folder"):
        LaionAestheticV2Scorer(weights_dir=None).setup()


@pytest.mark.parametrize(
    "make_head",
    [
        pytest.param(lambda path: save_laion_head(path, published_laion_head(), prefix=""), id="no-layers-prefix"),
        pytest.param(lambda path: save_laion_head(path, nn.Linear(768, 1), prefix="layers.0."), id="v1-linear"),
        pytest.param(lambda path: save_laion_head(path, published_laion_head(inputs=1152)), id="v2.5-shapes"),
        pytest.param(lambda path: path.write_bytes(b"<html>not found</html>"), id="not-a-checkpoint"),
        pytest.param(lambda path: torch.save([1, 2, 3], path), id="not-a-dict"),
    ],
)
def test_head_with_another_layout_is_refused(weights, tmp_path, make_head):
    (tmp_path / "clip-vit-large-patch14").symlink_to(weights / "clip-vit-large-patch14")
    make_head(tmp_path / HEAD_FILE)
    with pytest.raises(ValueError, match=r"LAION aesthetic head .*sac\+logos\+ava1-l14-linearMSE\.pth"):
        LaionAestheticV2Scorer(weights_dir=tmp_path).setup()


def test_published_head_layout_loads(weights):
    head = laion.load_head(weights / HEAD_FILE)
    assert [name for name, _ in head.named_parameters()] == [
        f"layers.{index}.{kind}" for index in (0, 2, 4, 6, 7) for kind in ("weight", "bias")
    ]
    assert not head.training


@pytest.mark.parametrize(
    "make_folder, message",
    [
        (lambda folder: folder.mkdir(), "no config.json"),
        (lambda folder: tiny_clip_config().save_pretrained(folder), "cannot load a CLIP vision model"),
        (
            lambda folder: CLIPVisionModelWithProjection(tiny_clip_config(projection_dim=512)).save_pretrained(folder),
            "projection_dim 512",
        ),
        (
            lambda folder: CLIPVisionModelWithProjection(tiny_clip_config(image_size=64)).save_pretrained(folder),
            "image_size 64",
        ),
        (
            lambda folder: CLIPVisionModel(tiny_clip_config()).save_pretrained(folder),
            "lacks weights .*visual_projection",
        ),
    ],
    ids=["empty", "config-only", "projection-512", "image-size-64", "no-projection"],
)
def test_malformed_clip_folder_is_a_clear_error(tmp_path, make_folder, message):
    folder = tmp_path / "clip-vit-large-patch14"
    make_folder(folder)
    with pytest.raises(ValueError, match=message) as error:
        ClipVitL14Embedder(weights_dir=tmp_path).setup()
    assert str(folder) in str(error.value)
