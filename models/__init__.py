"""ML scorers and embedders behind one interface (see `models.base`), looked up by name."""

from models.base import Critic, Embedder, Score, Scorer
from models.efficientnet import EfficientNetLite0Embedder
from models.internvl import INTERNVL_SCORERS
from models.laion import ClipVitL14Embedder, LaionAestheticV2Scorer
from models.technical import TechnicalQualityScorer

SCORERS: dict[str, type[Scorer]] = {
    cls.name: cls for cls in (TechnicalQualityScorer, LaionAestheticV2Scorer, *INTERNVL_SCORERS)
}
EMBEDDERS: dict[str, type[Embedder]] = {
    cls.name: cls for cls in (EfficientNetLite0Embedder, ClipVitL14Embedder)
}

__all__ = ["EMBEDDERS", "SCORERS", "Critic", "Embedder", "Score", "Scorer"]
