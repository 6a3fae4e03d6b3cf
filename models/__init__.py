"""ML scorers and embedders behind one interface (see `aesq.models.base`), looked up by name.

The registries name each model's module and class, and import the module only when the class is asked
for: checking a name costs nothing, so commands that only read results never import torch or scipy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module
from typing import Generic, TypeVar

from aesq.models.base import Critic, Embedder, Score, Scorer

Model = TypeVar("Model", Scorer, Embedder)


class LazyRegistry(Mapping[str, type[Model]], Generic[Model]):
    """Model name → class, from "module:Class" paths imported on first look-up of that name."""

    def __init__(self, paths: dict[str, str]) -> None:
        self._paths = paths

    def __getitem__(self, name: str) -> type[Model]:
        module, _, attribute = self._paths[name].partition(":")
        model: type[Model] = getattr(import_module(f"aesq.models.{module}"), attribute)
        return model

    def __contains__(self, name: object) -> bool:
        return name in self._paths

    def __iter__(self) -> Iterator[str]:
        return iter(self._paths)

    def __len__(self) -> int:
        return len(self._paths)


SCORERS: LazyRegistry[Scorer] = LazyRegistry(
    {
        "technical": "technical:TechnicalQualityScorer",
        "laion-aes-v2": "laion:LaionAestheticV2Scorer",
        "ernie-aes": "internvl:ErnieImageAesScorer",
        "artimuse": "internvl:ArtiMuseScorer",
        "unipercept-aesthetics": "internvl:UniPerceptAestheticsScorer",
        "unipercept-quality": "internvl:UniPerceptQualityScorer",
        "unipercept-structure": "internvl:UniPerceptStructureScorer",
    }
)
EMBEDDERS: LazyRegistry[Embedder] = LazyRegistry(
    {
        "efficientnet-lite0": "efficientnet:EfficientNetLite0Embedder",
        "clip-vit-l-14": "laion:ClipVitL14Embedder",
    }
)

__all__ = ["EMBEDDERS", "SCORERS", "Critic", "Embedder", "LazyRegistry", "Score", "Scorer"]
