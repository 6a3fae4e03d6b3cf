"""Tasks that find new objects in a source and record them as assets."""

from prefect import task

from aesq import ingest
from aesq.config import get_settings
from tasks import RETRY


@task(name="discover-new-objects", **RETRY)
def discover_new_objects(source: str) -> list[list[str]]:
    """List the source and keep keys not yet ingested.

    Args:
        source: `s3://bucket/prefix` or a local folder.

    Returns:
        Batches of object keys (new, or changed since their last ingest).
    """
    return ingest.discover(source, get_settings())


@task(name="ingest-objects", **RETRY)
def ingest_objects(source: str, keys: list[str]) -> list[int]:
    """Read one batch of objects, validate them and record assets with provenance.

    Args:
        source: the source the keys were listed from.
        keys: object keys of one batch.

    Returns:
        Ids of the assets now waiting for scores (failed and duplicate objects are not among them).
    """
    return ingest.ingest(source, keys, get_settings())
