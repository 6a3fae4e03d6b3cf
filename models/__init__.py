"""ML scorers and embedders behind one interface (see `aesq.models.base`), looked up by name."""

from aesq.models.base import Critic, Embedder, Score, Scorer
from aesq.models.efficientnet import EfficientNetLite0Embedder
from aesq.models.internvl import INTERNVL_SCORERS
from aesq.models.laion import ClipVitL14Embedder, LaionAestheticV2Scorer
from aesq.models.technical import TechnicalQualityScorer

_SCORER_CLASSES: tuple[type[Scorer], ...] = (TechnicalQualityScorer, LaionAestheticV2Scorer, *INTERNVL_SCORERS)
SCORERS: dict[str, type[Scorer]] = {cls.name: cls for cls in _SCORER_CLASSES}
EMBEDDERS: dict[str, type[Embedder]] = {cls.name: cls for cls in (EfficientNetLite0Embedder, ClipVitL14Embedder)}

__all__ = ["EMBEDDERS", "SCORERS", "Critic", "Embedder", "Score", "Scorer"]
