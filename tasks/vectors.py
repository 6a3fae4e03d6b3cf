"""Task that keeps each embedder's vector index trained as its rows grow."""

from prefect import task

from aesq.core import vectors
from aesq.core.config import Settings
from aesq.tasks import RETRY


@task(name="rebuild-vector-indexes", **RETRY)
def rebuild_vector_indexes(settings: Settings) -> dict[str, int]:
    """Rebuild the vector indexes whose embedders' rows have doubled since they were built.

    Returns:
        The lists of each index rebuilt, by embedder.
    """
    return vectors.rebuild_grown_indexes(settings)
