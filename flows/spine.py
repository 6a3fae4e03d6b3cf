"""The spine: ingest new objects, score them, aggregate per version.

Every flow takes its work by claims (aesq/core/claims.py), so any number of runs, deployments and workers
can run at once on the same source: each batch is fetched and scored by one of them.

A flow is an entry point: it reads the settings once when it starts and hands them to its tasks. Its own
parameters are only what a run may change (a source, a run's scorers, its namespace): flow parameters are
stored by the Prefect API, and the settings hold secrets.
"""

import time
from collections.abc import Iterator
from typing import Any, cast

from prefect import flow
from prefect.events import emit_event
from prefect.futures import PrefectFuture, wait
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from aesq.core.claims import Queued
from aesq.core.config import Settings, get_settings
from aesq.core.namespaces import Namespace, select_namespace
from aesq.core.scoring import BatchOutcome
from aesq.flows.events import INGESTED, SCORED
from aesq.tasks.aggregate import aggregate_versions
from aesq.tasks.ingest import (
    claim_objects,
    discover_objects,
    ingest_objects,
    others_ingesting,
)
from aesq.tasks.score import claim_assets, claim_backfill, others_scoring, release_assets, score_assets
from aesq.tasks.vectors import rebuild_vector_indexes

# A few batches in flight: downloads and decoding of one overlap the models working on another. A run
# claims no more than that ahead, so other workers on the same source get their share.
IN_FLIGHT = 4
# A thread for each in-flight batch's ingest and for its score (which waits for the ingest), and one for
# discovery: a claimed batch starts at once instead of waiting out its lease for a thread.
# The cast is Prefect's own (its flow decorator's type names the base runner's future type).
_RUNNER = cast(TaskRunner[PrefectFuture[Any]], ThreadPoolTaskRunner(max_workers=2 * IN_FLIGHT + 1))
POLL_SECONDS = 1.0


def _ended(future: PrefectFuture) -> bool:
    """Whether a submitted task run ended, asking its thread rather than the Prefect API (its final state
    is at hand afterwards)."""
    try:
        future.result(timeout=0, raise_on_failure=False)
    except TimeoutError:
        return False
    return True


def _room(active: list[PrefectFuture]) -> bool:
    """Wait until fewer than IN_FLIGHT of the `active` batches are unfinished (finished ones leave the list);
    False once one of them failed: no more work is claimed, and the flow reports that batch's error."""
    while True:
        ended = [future for future in active if _ended(future)]
        if any(not future.state.is_completed() for future in ended):
            return False
        active[:] = [future for future in active if future not in ended]
        if len(active) < IN_FLIGHT:
            return True
        time.sleep(0.05)


def _claimed_objects(
    source: str, settings: Settings, discovery: PrefectFuture | None, active: list[PrefectFuture]
) -> Iterator[list[Queued]]:
    """Batches claimed from the source's queue while discovery fills it, until it is empty and no other
    worker holds a claim on it (a dead worker's batch is taken over when its lease lapses)."""
    while _room(active):
        listing_done = discovery is None or _ended(discovery)
        if claimed := claim_objects(source, settings):
            yield claimed
        elif listing_done and not others_ingesting(source, settings):
            return
        else:
            time.sleep(POLL_SECONDS)


def _claimed_assets(
    active: list[PrefectFuture], settings: Settings, source: str | None, within: str | None
) -> Iterator[list[int]]:
    """Batches of assets claimed for scoring (of source `within` only, when given), pending ones first, then
    those lacking a model enabled since (one pass in id order), until none is due and no other worker holds
    a claim (on `source`'s assets, when given)."""
    backfill_after: int | None = 0  # None once this run's backfill pass is over
    while _room(active):
        ids = claim_assets(settings, within)
        if not ids and backfill_after is not None:
            ids = claim_backfill(backfill_after, settings, within)
            backfill_after = max(ids) if ids else None
        if ids:
            yield ids
        elif not others_scoring(settings, source):
            return
        else:
            time.sleep(POLL_SECONDS)


@flow(name="aesq-ingest", task_runner=_RUNNER)
def ingest_flow(source: str, listing: bool = True) -> list[int]:
    """Record the new objects of `source` as assets; returns the ids waiting for scores.

    With `listing` off, only objects already queued (by bucket notifications) are ingested.
    """
    settings = get_settings()
    discovery = discover_objects.submit(source, settings) if listing else None
    ingested: list[PrefectFuture] = []
    active: list[PrefectFuture] = []
    for claimed in _claimed_objects(source, settings, discovery, active):
        ingested.append(ingest_objects.submit(source, claimed, settings))
        active.append(ingested[-1])
    ids = [asset_id for future in ingested for asset_id in future.result()]
    if discovery is not None:
        discovery.result()
    if ids:
        emit_event(INGESTED, resource={"prefect.resource.id": f"aesq.source.{source}"}, payload={"assets": len(ids)})
    return ids


def _score_claimed(
    outcomes: list[PrefectFuture], settings: Settings, source: str | None = None, within: str | None = None
) -> list[BatchOutcome]:
    """Score every batch claimed for scoring (of source `within` only, when given), after the batches in
    `outcomes`; what could not be finished is given back for the next run."""
    active = list(outcomes)
    for ids in _claimed_assets(active, settings, source, within):
        outcomes.append(score_assets.submit(ids, settings))
        active.append(outcomes[-1])
    done = [future.result() for future in outcomes]
    if unfinished := [asset_id for outcome in done for asset_id in outcome.unfinished]:
        release_assets(unfinished, settings)
    return done


@flow(name="aesq-score", task_runner=_RUNNER)
def score_flow() -> list[BatchOutcome]:
    """Score every asset waiting for scores."""
    outcomes = _score_claimed([], get_settings())
    if outcomes:
        emit_event(SCORED, resource={"prefect.resource.id": "aesq.scoring"}, payload={"batches": len(outcomes)})
    return outcomes


@flow(name="aesq-aggregate")
def aggregate_flow() -> int:
    """Refresh per-version statistics."""
    return aggregate_versions(get_settings())


@flow(name="aesq-run", task_runner=_RUNNER)
def run_flow(
    source: str, scorers: list[str] | None = None, namespace: Namespace = "production", listing: bool = True
) -> list[BatchOutcome]:
    """Ingest, score and aggregate `source` once, each batch scored by the worker that ingested it, with
    its bytes still in memory; ends when the source is done, by this run or by others. With `listing` off, only
    objects already queued (by a retry, or notifications) are ingested: nothing new is listed. `scorers`, when
    given, are this run's only scorers, run here whatever the scoring pools (`Settings.for_run`), on this
    source's assets only (the rest of the database waits for the workers that run the configured models).
    `namespace` "labels" keeps the run in the labels database, apart from production (aesq/core/namespaces.py),
    which `aesq bench labels` prepares before it starts the run; this only selects it."""
    settings = get_settings() if scorers is None else get_settings().for_run(scorers)
    settings = select_namespace(settings, namespace)
    discovery = discover_objects.submit(source, settings) if listing else None
    ingested: list[PrefectFuture] = []
    scored: list[PrefectFuture] = []
    active: list[PrefectFuture] = []
    for claimed in _claimed_objects(source, settings, discovery, active):
        ingested.append(ingest := ingest_objects.submit(source, claimed, settings, score_next=True))
        # The ingest's future stands for its result (Prefect's types do not say so): scored once it is ingested.
        scored.append(score_assets.submit(ingest, settings))  # type: ignore[call-overload]
        active.append(scored[-1])
    wait(scored)
    for ingest in ingested:
        ingest.result()  # a failed ingest's own error; its batch's score never ran, and says only that
    if discovery is not None:
        discovery.result()
    outcomes = _score_claimed(scored, settings, source, within=None if scorers is None else source)
    aggregate_versions(settings)
    # Index upkeep after the run's data is stored; a failure is the task's to log, not the run's.
    rebuild_vector_indexes(settings, return_state=True)
    return outcomes
