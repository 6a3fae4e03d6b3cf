"""Scoring: fetch a batch of pending assets (`aesq.core.fetch`), run every enabled scorer and embedder, store.

Models are built once per worker process and shared by its task threads. Fetching, decoding and
each model's CPU preprocessing run on threads outside the model slot, so while one batch holds the
slot (one per process, plus any slot the caller adds, such as a GPU's concurrency limit) the next
batches are being prepared.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, select
from sqlalchemy.exc import SQLAlchemyError

from aesq.core import claims
from aesq.core.claims import lease_assets, log_work, release_assets, renew_assets
from aesq.core.config import ConfigurationError, Settings
from aesq.core.database import get_engine
from aesq.core.fetch import Cause, Unreadable, fetch_assets
from aesq.core.model_names import UnknownModel, check_model_names
from aesq.core.storage import StorageUnavailable, one_line, open_source, parse_location
from aesq.core.tables import CANONICAL_STATUSES, Asset, Embedding, ScoreRow
from aesq.core.writes import (
    ScoreValue,
    current_holders,
    defer,
    mark_failed,
    mark_scored,
    write_embeddings,
    write_scores,
)
from aesq.models import EMBEDDERS, SCORERS, Embedder, Scorer

logger = logging.getLogger(__name__)
models_in_use = threading.Lock()  # one batch at a time runs this process's models
_loading = threading.Lock()


class DeviceUnavailable(ConfigurationError):
    """The torch device the models are to run on does not exist here."""


def check_device(settings: Settings, named: str = "AESQ_DEVICE") -> None:
    """Fail before any work when this process's models cannot run on the configured device (`named` is where
    the user set it); torch is imported only for a device other than the CPU. With scoring pools this process
    runs no models: their workers check their own devices."""
    device = settings.device
    if device == "cpu" or settings.pools:
        return
    import torch

    try:
        kind, index = torch.device(device).type, torch.device(device).index
    except RuntimeError:
        raise DeviceUnavailable(f"{named}={device} is not a torch device: use cpu, cuda, cuda:N or mps") from None
    if kind == "cuda":
        if not torch.backends.cuda.is_built():
            raise DeviceUnavailable(
                f"{named}={device}: torch here has no CUDA (CPU-only build); set {named}=cpu or install a CUDA build"
            )
        count = torch.cuda.device_count()
        if count == 0:
            raise DeviceUnavailable(f"{named}={device}: torch sees no CUDA device (driver, CUDA_VISIBLE_DEVICES?)")
        if index is not None and index >= count:
            raise DeviceUnavailable(
                f"{named}={device}: there are only {count} CUDA devices (cuda:0 to cuda:{count - 1})"
            )
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"{named}={device}: torch has no MPS device here; set {named}=cpu")


@dataclass(frozen=True)
class BatchOutcome:
    """How a scored batch ended."""

    scored: int
    failed: int
    deferred: int = 0  # missing or unreadable for now: tried again on a later run
    unfinished: tuple[int, ...] = ()  # assets left claimed, so this run does not take them again; see release


@lru_cache
def _loaded(kind: str, name: str, weights_dir: Path | None, device: str) -> Scorer | Embedder:
    """Build and set up one model per process."""
    model = (SCORERS if kind == "scorer" else EMBEDDERS)[name](weights_dir=weights_dir, device=device)
    model.setup()
    logger.info("loaded %s %s on %s", kind, name, device)
    return model


def loaded_scorer(name: str, settings: Settings) -> Scorer:
    """One scorer of the settings, loaded once per process (shared with scoring)."""
    if name not in SCORERS:
        raise UnknownModel(f"unknown scorer {name!r}; available: {', '.join(sorted(SCORERS))}")
    check_device(settings)
    with _loading:
        return _loaded("scorer", name, settings.weights_dir, settings.device)  # type: ignore[return-value]


def load_models(settings: Settings) -> tuple[list[Scorer], list[Embedder]]:
    """The enabled scorers and embedders, loaded once per process."""
    check_model_names(settings)
    check_device(settings)
    with _loading:
        scorers = [_loaded("scorer", name, settings.weights_dir, settings.device) for name in settings.scorers]
        embedders = [_loaded("embedder", name, settings.weights_dir, settings.device) for name in settings.embedders]
    return scorers, embedders  # type: ignore[return-value]


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
    asset_ids: list[int],
    settings: Settings,
    model_slot: Callable[[], AbstractContextManager] = nullcontext,
    own_claims: bool = True,
) -> BatchOutcome:
    """Give the assets among `asset_ids` every enabled model's output they lack; store it and their status.

    Pending assets are scored for the first time; scored ones are only backfilled for models enabled
    since. Only the bytes ingested are scored (SHA-256 checked). An image that cannot be decoded fails a
    pending asset; one missing or unreadable for now is deferred (`settings.retry_attempts`, with
    back-off); a batch in which storage failed for every image raises, so the task is retried.
    Outputs are stored on each content's canonical asset as it stands when they are written.
    `model_slot` is held, inside this process's own slot, while the models run. With `own_claims` (this
    process claimed the batch) its claims are renewed while it is worked on, however long the models take,
    and end with the batch but for the assets it could not finish, held until the run gives them back; a
    pool worker, scoring a batch its flow claimed, leaves the claims to the flow.
    """
    with keep_claimed(asset_ids, settings) if own_claims else nullcontext():
        return _score_assets(asset_ids, settings, model_slot, own_claims)


@contextmanager
def keep_claimed(asset_ids: list[int], settings: Settings) -> Iterator[None]:
    """Renew the live claims on `asset_ids` every third of a lease until the block ends, so a batch slower
    than the lease (a big model on CPU, a queue of pool workers) is not taken and done again by another."""
    stop = threading.Event()

    def renew() -> None:
        """Extend the leases until stopped; a failed renewal is tried again a third of a lease later."""
        while not stop.wait(settings.lease_seconds / 3):
            try:
                with get_engine(settings).begin() as connection:
                    renew_assets(connection, asset_ids, settings.lease_seconds)
            except SQLAlchemyError as error:
                logger.warning("could not renew the claims on a batch: %s", one_line(error))

    renewer = threading.Thread(target=renew, name="aesq-claims", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()


def _score_assets(
    asset_ids: list[int], settings: Settings, model_slot: Callable[[], AbstractContextManager], own_claims: bool
) -> BatchOutcome:
    """`score_assets` itself."""
    scorers, embedders = load_models(settings)
    engine = get_engine(settings)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Asset.id, Asset.storage, Asset.bucket, Asset.key, Asset.etag, Asset.sha256, Asset.status)
            .where(Asset.id.in_(asset_ids), Asset.status.in_(CANONICAL_STATUSES))
            .order_by(Asset.id)
        ).all()
        missing = _missing_outputs(connection, [row.id for row in rows], scorers, embedders)
    needed = set().union(*missing.values())
    pending = {row.id for row in rows if row.status == "pending"}
    rows = [row for row in rows if row.id in needed or row.id in pending]
    decoded, reads = fetch_assets(list(rows), settings)
    unreadable = {row.id: item for row, item in zip(rows, decoded) if isinstance(item, Unreadable)}
    if rows and len(unreadable) == len(rows) and all(u.cause is Cause.STORAGE_FAILED for u in unreadable.values()):
        if own_claims:
            with engine.begin() as connection:  # free for a retry, or the next run, at once
                release_assets(connection, asset_ids)
        raise StorageUnavailable(next(iter(unreadable.values())).reason)
    failures = {asset_id: item.reason for asset_id, item in unreadable.items()}
    images = {row.id: item for row, item in zip(rows, decoded) if not isinstance(item, Unreadable)}
    work = {model: [asset_id for asset_id in images if asset_id in lacking] for model, lacking in missing.items()}
    work = {model: ids for model, ids in work.items() if ids}
    with ThreadPoolExecutor(max(1, len(work))) as pool:
        prepared = dict(zip(work, pool.map(lambda model: model.prepare([images[i] for i in work[model]]), work)))

    scores: list[ScoreValue] = []
    vectors: dict[str, tuple[list[int], np.ndarray]] = {}
    with models_in_use if work else nullcontext(), model_slot() if work else nullcontext():
        for model, ids in work.items():
            if isinstance(model, Scorer):
                for asset_id, score in zip(ids, model.score_prepared(prepared[model]), strict=True):
                    if math.isfinite(score.value):
                        scores.append(ScoreValue(asset_id, model.name, model.version, float(score.value), score.raw))
                    else:
                        failures[asset_id] = f"scorer {model.name} returned {score.value}"
            else:
                vectors[model.name] = (ids, model.embed_prepared(prepared[model]))

    sha_of = {row.id: row.sha256 for row in rows}
    deferred = {asset_id: item.reason for asset_id, item in unreadable.items() if item.transient}
    with engine.begin() as connection:
        holder = current_holders(connection, sha_of)
        usable = {asset_id: held for asset_id, held in holder.items() if asset_id not in failures}
        write_scores(connection, [replace(s, asset_id=usable[s.asset_id]) for s in scores if s.asset_id in usable])
        for name, (ids, matrix) in vectors.items():
            kept = [index for index, asset_id in enumerate(ids) if asset_id in usable]
            write_embeddings(connection, name, [usable[ids[index]] for index in kept], matrix[kept])
        defer(
            connection,
            {holder[i]: reason for i, reason in deferred.items() if i in holder},
            settings.retry_attempts,
            settings.retry_backoff_seconds,
        )
        mark_failed(
            connection, {holder[i]: reason for i, reason in failures.items() if i in holder and i not in deferred}
        )
        scored_ids = [usable[i] for i in images if i in pending and i in usable]
        mark_scored(connection, scored_ids)
        if own_claims:
            release_assets(connection, [asset_id for asset_id in asset_ids if asset_id not in failures])
            lease_assets(connection, sorted(failures), settings.lease_seconds)  # not again in this run; see release
        log_work(connection, "fetch", reads)
        for model, ids in work.items():
            log_work(connection, f"model:{model.name}", len(ids))
    return BatchOutcome(
        scored=len(scored_ids),
        failed=len(failures) - len(deferred),
        deferred=len(deferred),
        unfinished=tuple(sorted(failures)),
    )


def claim_batch(settings: Settings, within: str | None = None) -> list[int]:
    """Claim the next batch of pending assets due for scoring (deferred ones once their back-off has passed),
    of source `within` only when given; empty when none is free."""
    location = parse_location(within) if within is not None else None
    with get_engine(settings).begin() as connection:
        return claims.claim_pending(connection, settings.batch_size, settings.lease_seconds, location)


def claim_backfill(settings: Settings, after: int, within: str | None = None) -> list[int]:
    """Claim the next batch of scored assets, ids above `after` (of source `within` only, when given), lacking
    the output of a model enabled since (here or in any scoring pool); empty when there is none left."""
    check_model_names(settings)
    wanted_scores = [(name, SCORERS[name].version) for name in settings.enabled_scorers]
    location = parse_location(within) if within is not None else None
    with get_engine(settings).begin() as connection:
        return claims.claim_backfill(
            connection,
            wanted_scores,
            settings.enabled_embedders,
            after,
            settings.batch_size,
            settings.lease_seconds,
            location,
        )


def others_scoring(settings: Settings, source_uri: str | None = None) -> bool:
    """Whether other workers still hold claims on assets (of `source_uri` only, when given: a run on one
    source does not wait for a busy worker's backlog elsewhere)."""
    source = open_source(source_uri, settings) if source_uri is not None else None
    with get_engine(settings).connect() as connection:
        if source is None:
            return claims.others_scoring(connection)
        return claims.others_scoring(connection, source.storage, source.bucket, source.prefix)


def end_claims(asset_ids: list[int], unfinished: set[int], settings: Settings) -> None:
    """End this worker's claims on a batch the pools scored, but for the assets they could not finish (held
    until the run gives them back, so it does not take them again)."""
    with get_engine(settings).begin() as connection:
        release_assets(connection, [asset_id for asset_id in asset_ids if asset_id not in unfinished])
        lease_assets(connection, sorted(unfinished), settings.lease_seconds)


def release(asset_ids: list[int], settings: Settings) -> None:
    """End this run's claims on assets it could not finish, so the next run (or another worker) takes them."""
    with get_engine(settings).begin() as connection:
        release_assets(connection, asset_ids)


def batch_outcome(asset_ids: list[int], settings: Settings, unfinished: tuple[int, ...] = ()) -> BatchOutcome:
    """How the assets of a batch stand now (after workers elsewhere scored it): scored, failed and deferred;
    `unfinished` are the ones the workers could not finish."""
    with get_engine(settings).connect() as connection:
        rows = connection.execute(select(Asset.status, Asset.retry_after).where(Asset.id.in_(asset_ids))).all()
    statuses = [row.status for row in rows]
    deferred = sum(row.status == "pending" and row.retry_after is not None for row in rows)
    return BatchOutcome(
        scored=statuses.count("scored"), failed=statuses.count("failed"), deferred=deferred, unfinished=unfinished
    )
