"""Scoring: fetch a batch of pending assets, decode them, run every enabled scorer and embedder, store.

Models are built once per worker process and shared by its task threads. Fetching, decoding and
each model's CPU preprocessing run on threads outside the model slot, so while one batch holds the
slot (one per process, plus any slot the caller adds, such as a GPU's concurrency limit) the next
batches are being prepared.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import Connection, select, text

from aesq.batches import in_batches
from aesq.config import Settings
from aesq.database import get_engine
from aesq.images import ImageRejected, decode_rgb
from aesq.storage import FolderSource, ObjectMissing, S3Source, Source, minio_client, recent_objects
from aesq.store import ScoreValue, mark_failed, mark_scored, write_embeddings, write_scores
from aesq.tables import Asset, Embedding, ScoreRow
from models import EMBEDDERS, SCORERS, Embedder, Scorer

logger = logging.getLogger(__name__)
models_in_use = threading.Lock()  # one batch at a time runs this process's models
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
    logger.info("loaded %s %s on %s", kind, name, device)
    return model


def check_model_names(settings: Settings) -> None:
    """Fail before any work when a configured scorer or embedder does not exist."""
    for kind, names, registry in (
        ("scorer", settings.enabled_scorers, SCORERS),
        ("embedder", settings.enabled_embedders, EMBEDDERS),
    ):
        for name in names:
            if name not in registry:
                raise UnknownModel(f"unknown {kind} {name!r}; available: {', '.join(sorted(registry))}")


def loaded_scorer(name: str, settings: Settings) -> Scorer:
    """One scorer of the settings, loaded once per process (shared with scoring)."""
    if name not in SCORERS:
        raise UnknownModel(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}")
    with _loading:
        return _loaded("scorer", name, settings.weights_dir, settings.device)  # type: ignore[return-value]


def load_models(settings: Settings) -> tuple[list[Scorer], list[Embedder]]:
    """The enabled scorers and embedders, loaded once per process."""
    check_model_names(settings)
    with _loading:
        scorers = [_loaded("scorer", name, settings.weights_dir, settings.device) for name in settings.scorers]
        embedders = [_loaded("embedder", name, settings.weights_dir, settings.device) for name in settings.embedders]
    return scorers, embedders  # type: ignore[return-value]


def source_for(storage: str, bucket: str, settings: Settings) -> Source:
    """Reopen the storage an asset was ingested from."""
    if storage == "s3":
        return S3Source(minio_client(settings), bucket, "")
    return FolderSource(Path(bucket))


def fetch_and_decode(source: Source, key: str, etag: str | None, max_pixels: int) -> Image.Image | str:
    """The decoded image (bytes from ingest's recent reads when this worker has them), or why it cannot be."""
    try:
        stored = recent_objects.take(source, key, etag) or source.read(key)
        return decode_rgb(stored.data, max_pixels)
    except (ObjectMissing, ImageRejected) as problem:
        return str(problem)


def fetch_asset(row, settings: Settings) -> Image.Image | str:
    """The decoded image of an asset row (storage, bucket, key, etag), or why it cannot be read."""
    return fetch_and_decode(source_for(row.storage, row.bucket, settings), row.key, row.etag, settings.max_pixels)


def fetch_assets(rows: list, settings: Settings) -> list[Image.Image | str]:
    """`fetch_asset` of each row on the fetch threads, in order, opening each storage location once."""
    sources: dict[tuple[str, str], Source] = {}
    for row in rows:
        sources.setdefault((row.storage, row.bucket), source_for(row.storage, row.bucket, settings))
    with ThreadPoolExecutor(settings.fetch_threads) as pool:
        return list(
            pool.map(
                lambda row: fetch_and_decode(sources[(row.storage, row.bucket)], row.key, row.etag, settings.max_pixels),
                rows,
            )
        )


def _missing_outputs(
    connection: Connection, ids: list[int], scorers: list[Scorer], embedders: list[Embedder]
) -> dict[Scorer | Embedder, set[int]]:
    """For each enabled model, the assets among `ids` that do not have its output yet."""
    have_scores = set(
        connection.execute(
            select(ScoreRow.asset_id, ScoreRow.scorer, ScoreRow.scorer_version).where(ScoreRow.asset_id.in_(ids))
        ).all()
    )
    have_vectors = set(
        connection.execute(select(Embedding.asset_id, Embedding.embedder).where(Embedding.asset_id.in_(ids))).all()
    )
    missing: dict[Scorer | Embedder, set[int]] = {}
    for scorer in scorers:
        missing[scorer] = {i for i in ids if (i, scorer.name, scorer.version) not in have_scores}
    for embedder in embedders:
        missing[embedder] = {i for i in ids if (i, embedder.name) not in have_vectors}
    return missing


def score_assets(
    asset_ids: list[int], settings: Settings, model_slot: Callable[[], AbstractContextManager] = nullcontext
) -> BatchOutcome:
    """Give the assets among `asset_ids` every enabled model's output they lack; store it and their status.

    Pending assets are scored for the first time; scored ones are only backfilled for models enabled
    since. An image that cannot be fetched or decoded fails a pending asset; a scored one keeps its status.
    `model_slot` is held, inside this process's own slot, while the models run.
    """
    scorers, embedders = load_models(settings)
    engine = get_engine(settings)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Asset.id, Asset.storage, Asset.bucket, Asset.key, Asset.etag, Asset.status)
            .where(Asset.id.in_(asset_ids), Asset.status.in_(("pending", "scored")))
            .order_by(Asset.id)
        ).all()
        missing = _missing_outputs(connection, [row.id for row in rows], scorers, embedders)
    needed = set().union(*missing.values())
    pending = {row.id for row in rows if row.status == "pending"}
    rows = [row for row in rows if row.id in needed or row.id in pending]
    decoded = fetch_assets(rows, settings)
    failures = {row.id: item for row, item in zip(rows, decoded) if isinstance(item, str)}
    images = {row.id: item for row, item in zip(rows, decoded) if not isinstance(item, str)}
    work = {model: [asset_id for asset_id in images if asset_id in lacking] for model, lacking in missing.items()}
    work = {model: ids for model, ids in work.items() if ids}
    with ThreadPoolExecutor(max(1, len(work))) as pool:
        prepared = dict(zip(work, pool.map(lambda model: model.prepare([images[i] for i in work[model]]), work)))

    scores: list[ScoreValue] = []
    vectors: dict[str, tuple[list[int], np.ndarray]] = {}
    with (models_in_use if work else nullcontext()), (model_slot() if work else nullcontext()):
        for model, ids in work.items():
            if isinstance(model, Scorer):
                for asset_id, score in zip(ids, model.score_prepared(prepared[model]), strict=True):
                    if math.isfinite(score.value):
                        scores.append(ScoreValue(asset_id, model.name, model.version, float(score.value), score.raw))
                    else:
                        failures[asset_id] = f"scorer {model.name} returned {score.value}"
            else:
                vectors[model.name] = (ids, model.embed_prepared(prepared[model]))
    scored_ids = [asset_id for asset_id in images if asset_id in pending and asset_id not in failures]

    with engine.begin() as connection:
        write_scores(connection, [score for score in scores if score.asset_id not in failures])
        for name, (ids, matrix) in vectors.items():
            keep = [index for index, asset_id in enumerate(ids) if asset_id not in failures]
            write_embeddings(connection, name, [ids[index] for index in keep], matrix[keep])
        mark_failed(connection, {asset_id: reason for asset_id, reason in failures.items() if asset_id in pending})
        mark_scored(connection, scored_ids)
    return BatchOutcome(scored=len(scored_ids), failed=len(failures))


def pending_batches(settings: Settings) -> list[list[int]]:
    """Ids of assets waiting for scores, or lacking the output of a model enabled since (here or in
    any scoring pool), in batches."""
    check_model_names(settings)
    wanted_scores = [(name, SCORERS[name].version) for name in settings.enabled_scorers]
    query = text(
        """
        SELECT a.id FROM assets a
        WHERE a.status = 'pending'
           OR a.status = 'scored' AND (
                EXISTS (SELECT 1 FROM jsonb_to_recordset(CAST(:scorers AS jsonb)) AS w(name text, version text)
                        WHERE NOT EXISTS (SELECT 1 FROM scores s WHERE s.asset_id = a.id
                                          AND s.scorer = w.name AND s.scorer_version = w.version))
             OR EXISTS (SELECT 1 FROM jsonb_array_elements_text(CAST(:embedders AS jsonb)) AS w(name)
                        WHERE NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.asset_id = a.id AND e.embedder = w.name)))
        ORDER BY a.id
        """
    )
    params = {
        "scorers": json.dumps([{"name": name, "version": version} for name, version in wanted_scores]),
        "embedders": json.dumps(settings.enabled_embedders),
    }
    with get_engine(settings).connect() as connection:
        ids = list(connection.execute(query, params).scalars())
    return in_batches(ids, settings.batch_size)


def batch_outcome(asset_ids: list[int], settings: Settings) -> BatchOutcome:
    """How the assets of a batch stand now: scored and failed counts (after workers elsewhere scored it)."""
    with get_engine(settings).connect() as connection:
        statuses = connection.execute(select(Asset.status).where(Asset.id.in_(asset_ids))).scalars().all()
    return BatchOutcome(scored=statuses.count("scored"), failed=statuses.count("failed"))
