"""Tasks that find new objects in a source, claim them and record them as assets."""

from prefect import task

from aesq.core import discovery, ingest
from aesq.core.claims import Queued
from aesq.core.config import Settings
from aesq.tasks import RETRY


@task(name="discover-objects", **RETRY)
def discover_objects(source: str, settings: Settings) -> discovery.Discovered:
    """List the source and queue the keys not yet ingested (new, changed or back), page by page.

    Args:
        source: `s3://bucket/prefix` or a local folder.
        settings: the flow run's settings.

    Returns:
        How many objects were listed, queued and found deleted.
    """
    return discovery.discover(source, settings)


@task(name="claim-objects", **RETRY)
def claim_objects(source: str, settings: Settings) -> list[Queued]:
    """Claim the next batch of the source's queued objects for this worker.

    Returns:
        The claimed objects; empty when every queued object is claimed (or none is queued).
    """
    return ingest.claim_batch(source, settings)


@task(name="ingest-objects", **RETRY)
def ingest_objects(source: str, claimed: list[Queued], settings: Settings, score_next: bool = False) -> list[int]:
    """Read one claimed batch of objects, validate them and record assets with provenance.

    Args:
        source: the source the objects were queued from.
        claimed: the batch, as `claim_objects` handed it out.
        settings: the flow run's settings.
        score_next: claim the assets it leaves pending for this worker, which scores them next.

    Returns:
        Ids of the assets now waiting for scores (failed and duplicate objects are not among them).
    """
    return ingest.ingest(source, claimed, settings, score_next)


@task(name="others-ingesting", **RETRY)
def others_ingesting(source: str, settings: Settings) -> bool:
    """Whether other workers still hold claims on the source's queued objects."""
    return ingest.others_ingesting(source, settings)
