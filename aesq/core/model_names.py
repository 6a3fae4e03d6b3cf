"""Configured scorer and embedder names checked against the model registry.

Apart from scoring, so that every command can check its settings first without loading what scoring needs
(object stores, image decoding); the registry imports no model.
"""

from __future__ import annotations

from aesq.core.config import ConfigurationError, Settings
from aesq.models import EMBEDDERS, SCORERS


class UnknownModel(ConfigurationError):
    """A scorer or embedder name in the settings that aesq does not have."""


def check_model_names(settings: Settings) -> None:
    """Fail before any work when a configured scorer or embedder does not exist."""
    for kind, names, registry in (
        ("scorer", settings.enabled_scorers, SCORERS),
        ("embedder", settings.enabled_embedders, EMBEDDERS),
    ):
        for name in names:
            if name not in registry:
                raise UnknownModel(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")
