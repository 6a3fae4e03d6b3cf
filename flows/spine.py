"""The spine: ingest new objects, score them, aggregate per version."""

from prefect import flow
from prefect.events import emit_event
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from aesq.scoring import BatchOutcome
from tasks.aggregate import aggregate_versions
from tasks.ingest import discover_new_objects, ingest_objects
from tasks.score import pending_assets, score_assets

# Events that chain the deployments (flows/deployments.py): emitted only when a flow did something.
INGESTED = "aesq.assets.ingested"
SCORED = "aesq.assets.scored"

# A few batches in flight: downloads and decoding of one overlap the models working on another.
_RUNNER = ThreadPoolTaskRunner(max_workers=4)


@flow(name="aesq-ingest", task_runner=_RUNNER)
def ingest_flow(source: str) -> list[int]:
    """Record new objects of `source` as assets; returns the ids waiting for scores."""
    batches = discover_new_objects(source)
    futures = [ingest_objects.submit(source, keys) for keys in batches]
    ids = [asset_id for future in futures for asset_id in future.result()]
    if ids:
        emit_event(INGESTED, resource={"prefect.resource.id": f"aesq.source.{source}"}, payload={"assets": len(ids)})
    return ids


@flow(name="aesq-score", task_runner=_RUNNER)
def score_flow() -> list[BatchOutcome]:
    """Score every pending asset."""
    outcomes = [future.result() for future in [score_assets.submit(ids) for ids in pending_assets()]]
    if outcomes:
        emit_event(SCORED, resource={"prefect.resource.id": "aesq.scoring"}, payload={"batches": len(outcomes)})
    return outcomes


@flow(name="aesq-aggregate")
def aggregate_flow() -> int:
    """Refresh per-version statistics."""
    return aggregate_versions()


@flow(name="aesq-run", task_runner=_RUNNER)
def run_flow(source: str) -> list[BatchOutcome]:
    """Ingest, score and aggregate `source` once, scoring each batch as soon as it is ingested."""
    batches = discover_new_objects(source)
    ingested = [ingest_objects.submit(source, keys) for keys in batches]
    scored = [score_assets.submit(ids) for ids in ingested]
    wait(scored)
    for ingest in ingested:
        ingest.result()  # a failed ingest's own error; its batch's score never ran, and says only that
    leftovers = [score_assets.submit(ids) for ids in pending_assets()]
    outcomes = [future.result() for future in scored + leftovers]
    aggregate_versions()
    return outcomes
