"""Scoring: fetch a batch of pending assets, decode them, run every enabled scorer and embedder, store.

Models are built once per worker process and shared by its task threads; one batch at a time
runs on them (one scoring slot per process), while other threads fetch and decode the next batch.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image
from sqlalchemy import select

from aesq.batches import in_batches
from aesq.config import Settings
from aesq.database import get_engine
from aesq.images import ImageRejected, decode_rgb
from aesq.storage import FolderSource, ObjectMissing, S3Source, Source, minio_client, recent_objects
from aesq.store import ScoreValue, mark_failed, mark_scored, write_embeddings, write_scores
from aesq.tables import Asset
from models import EMBEDDERS, SCORERS, Embedder, Scorer

_model_slot = threading.Lock()
_loading = threading.Lock()


class UnknownModel(ValueError):
    """A scorer or embedder name in the settings that aesq does not have."""


@dataclass(frozen=True)
class BatchOutcome:
    """How a scored batch ended."""

    scored: int
    failed: int


@lru_cache
def _loaded(kind: str, name: str, weights_dir: Path | None, device: str) -> Scorer | Embedder:
    """Build and set up one model per process."""
    model = (SCORERS if kind == "scorer" else EMBEDDERS)[name](weights_dir=weights_dir, device=device)
    model.setup()
    return model


def check_model_names(settings: Settings) -> None:
    """Fail before any work when a configured scorer or embedder does not exist."""
    for kind, names, registry in (("scorer", settings.scorers, SCORERS), ("embedder", settings.embedders, EMBEDDERS)):
        for name in names:
            if name not in registry:
                raise UnknownModel(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")


def load_models(settings: Settings) -> tuple[list[Scorer], list[Embedder]]:
    """The enabled scorers and embedders, loaded once per process."""
    check_model_names(settings)
    with _loading:
        scorers = [_loaded("scorer", name, settings.weights_dir, settings.device) for name in settings.scorers]
        embedders = [_loaded("embedder", name, settings.weights_dir, settings.device) for name in settings.embedders]
    return scorers, embedders  # type: ignore[return-value]


def _source_for(storage: str, bucket: str, settings: Settings) -> Source:
    """Reopen the storage an asset was ingested from."""
    if storage == "s3":
        return S3Source(minio_client(settings), bucket, "")
    return FolderSource(Path(bucket))


def _fetch_and_decode(source: Source, key: str, etag: str | None, max_pixels: int) -> Image.Image | str:
    """The decoded image (bytes from ingest's recent reads when this worker has them), or why it cannot be."""
    try:
        stored = recent_objects.take(source, key, etag) or source.read(key)
        return decode_rgb(stored.data, max_pixels)
    except (ObjectMissing, ImageRejected) as problem:
        return str(problem)


def score_assets(asset_ids: list[int], settings: Settings) -> BatchOutcome:
    """Score the pending assets among `asset_ids` and store scores, embeddings and statuses."""
    scorers, embedders = load_models(settings)
    engine = get_engine(settings)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Asset.id, Asset.storage, Asset.bucket, Asset.key, Asset.etag)
            .where(Asset.id.in_(asset_ids), Asset.status == "pending")
            .order_by(Asset.id)
        ).all()
    sources: dict[tuple[str, str], Source] = {}
    for row in rows:
        sources.setdefault((row.storage, row.bucket), _source_for(row.storage, row.bucket, settings))
    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        decoded = list(
            pool.map(
                lambda row: _fetch_and_decode(sources[(row.storage, row.bucket)], row.key, row.etag, settings.max_pixels),
                rows,
            )
        )
    failures = {row.id: item for row, item in zip(rows, decoded) if isinstance(item, str)}
    good = [(row.id, item) for row, item in zip(rows, decoded) if not isinstance(item, str)]
    ids = [asset_id for asset_id, _ in good]
    images = [image for _, image in good]

    scores: list[ScoreValue] = []
    vectors = {}
    if images:
        with _model_slot:
            for scorer in scorers:
                for asset_id, score in zip(ids, scorer.score(images), strict=True):
                    if math.isfinite(score.value):
                        scores.append(ScoreValue(asset_id, scorer.name, scorer.version, float(score.value), score.raw))
                    else:
                        failures[asset_id] = f"scorer {scorer.name} returned {score.value}"
            for embedder in embedders:
                vectors[embedder.name] = embedder.embed(images)
    scored_ids = [asset_id for asset_id in ids if asset_id not in failures]

    with engine.begin() as connection:
        write_scores(connection, [score for score in scores if score.asset_id not in failures])
        for name, matrix in vectors.items():
            keep = [index for index, asset_id in enumerate(ids) if asset_id not in failures]
            write_embeddings(connection, name, [ids[index] for index in keep], matrix[keep])
        mark_failed(connection, failures)
        mark_scored(connection, scored_ids)
    return BatchOutcome(scored=len(scored_ids), failed=len(failures))


def pending_batches(settings: Settings) -> list[list[int]]:
    """Ids of every asset waiting for scores, in batches of `batch_size`."""
    with get_engine(settings).connect() as connection:
        ids = list(connection.execute(select(Asset.id).where(Asset.status == "pending").order_by(Asset.id)).scalars())
    return in_batches(ids, settings.batch_size)
