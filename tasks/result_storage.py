"""Where Prefect keeps what flows hand to the scoring pools' workers: each batch's parameters and the results.

Both sides put a Prefect storage block on the same place on every pool task (`handed_over_task`), so a worker
on another host reads the ids a flow stored, and the flow reads the worker's outcome (through the worker's
block: every host must name the S3 endpoint alike). AESQ_RESULT_STORAGE names the place: an S3 location on
aesq's own object store (saved as a prefect-aws `S3Bucket` block with the AESQ_S3_* credentials) or a folder
every host mounts; unset, Prefect's local storage, which only processes sharing a home folder see.
"""

from __future__ import annotations

import hashlib
import time
from functools import cache
from typing import TypeVar

from prefect.exceptions import ObjectNotFound
from prefect.futures import PrefectFuture
from pydantic import SecretStr

from aesq.core.config import Settings
from aesq.core.storage import BatchUnread, SourceError, check_source, parse_location

R = TypeVar("R")
# How often a flow waiting for a pool looks whether the run it handed over still exists.
LOOK_SECONDS = 5.0


def check_result_storage(settings: Settings) -> None:
    """Say at start-up what is wrong with AESQ_RESULT_STORAGE (no bucket or folder, refused credentials)."""
    if settings.result_storage is None:
        return
    try:
        check_source(settings.result_storage, settings)
    except SourceError as error:
        raise SourceError(f"AESQ_RESULT_STORAGE: {error}") from None


def pool_result(future: PrefectFuture[R], pool: str, wait_seconds: float) -> R:
    """The result of a task run handed to pool `pool`, waiting up to `wait_seconds` for it.

    A worker that cannot read the run's parameters deletes the run (Prefect's task worker does): the hosts keep
    them in different places, or the storage failed that once. Looking for the run every LOOK_SECONDS says so
    within seconds rather than after the whole wait; the error is retried (the task's retries hand the batch
    over again), so a passing failure of the storage costs a retry and a lasting one ends the run in one line.
    """
    deadline = time.monotonic() + wait_seconds
    try:
        while not future.state.is_final() and (left := deadline - time.monotonic()) > 0:
            future.wait(timeout=min(left, LOOK_SECONDS))  # reads the run first: ObjectNotFound once it is deleted
    except ObjectNotFound:
        raise BatchUnread(
            f"a worker of pool {pool!r} could not read the batch handed to it: give the flows and every pool worker "
            "the same AESQ_RESULT_STORAGE (an s3:// location or a folder all of them mount), or see the worker's log"
        ) from None
    return future.result(timeout=0)


def result_storage_block(settings: Settings) -> str | None:
    """The slug of the Prefect block for AESQ_RESULT_STORAGE, saved on the Prefect server once per process;
    None where it is unset (Prefect's local storage)."""
    if settings.result_storage is None:
        return None
    location = parse_location(settings.result_storage)
    if location.storage == "file":
        return _saved_folder_block(location.bucket)
    return _saved_s3_block(
        location.bucket,
        location.prefix,
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key,
        settings.s3_secure,
        settings.s3_region,
    )


def _block_name(*place: str) -> str:
    """A block name of its own for each storage place (and S3 key), so deployments sharing a Prefect server, or
    hosts with keys of their own, never overwrite each other's block."""
    return "aesq-results-" + hashlib.sha256("\n".join(place).encode()).hexdigest()[:12]


@cache
def _saved_folder_block(folder: str) -> str:
    """Save a LocalFileSystem block on `folder` (overwriting one of the same name); returns its slug."""
    from prefect.filesystems import LocalFileSystem

    name = _block_name("file", folder)
    LocalFileSystem(basepath=folder).save(name, overwrite=True)
    return f"{LocalFileSystem.get_block_type_slug()}/{name}"


@cache
def _saved_s3_block(
    bucket: str, folder: str, endpoint: str, access_key: str, secret_key: SecretStr, secure: bool, region: str | None
) -> str:
    """Save an S3Bucket block on s3://bucket/folder at `endpoint` (overwriting one of the same name); returns
    its slug."""
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    name = _block_name("s3", endpoint, bucket, folder, access_key)
    credentials = AwsCredentials(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        aws_client_parameters=AwsClientParameters(endpoint_url=f"{'https' if secure else 'http'}://{endpoint}"),
    )
    S3Bucket(bucket_name=bucket, bucket_folder=folder.rstrip("/"), credentials=credentials).save(name, overwrite=True)
    return f"{S3Bucket.get_block_type_slug()}/{name}"
