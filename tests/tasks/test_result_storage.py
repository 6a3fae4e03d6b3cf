"""AESQ_RESULT_STORAGE: the Prefect block saved for it, on the real Prefect API, S3 server and file system."""

from __future__ import annotations

import uuid
from datetime import datetime

import pytest
from prefect.blocks.core import Block
from prefect.client.orchestration import get_client
from prefect.filesystems import LocalFileSystem

from aesq.core.config import get_settings
from aesq.core.storage import SourceError
from aesq.tasks.result_storage import check_result_storage, result_storage_block

pytestmark = pytest.mark.usefixtures("prefect_harness")


def saved_at(slug: str) -> datetime:
    """When the block document of `slug` was last written on the Prefect server."""
    block_type, _, name = slug.partition("/")
    with get_client(sync_client=True) as client:
        return client.read_block_document_by_name(name, block_type_slug=block_type).updated


def test_without_the_setting_prefect_keeps_its_local_default(settings):
    assert settings.result_storage is None and result_storage_block(settings) is None
    check_result_storage(settings)  # nothing to check


def test_an_s3_location_is_a_block_that_writes_into_that_bucket_and_folder(settings, s3_client, monkeypatch):
    bucket = f"results-{uuid.uuid4().hex[:10]}"
    s3_client.make_bucket(bucket)
    monkeypatch.setenv("AESQ_RESULT_STORAGE", f"s3://{bucket}/prefect/")
    get_settings.cache_clear()
    check_result_storage(get_settings())
    slug = result_storage_block(get_settings())
    assert slug is not None and slug.startswith("s3-bucket/aesq-results-")
    saved = saved_at(slug)
    assert result_storage_block(get_settings()) == slug and saved_at(slug) == saved  # once per process

    # What another host loads by that slug reaches the same objects with the credentials saved in it.
    block = Block.load(slug)
    block.write_path("parameters/one", b"[1, 2]")
    assert s3_client.get_object(bucket, "prefect/parameters/one").read() == b"[1, 2]"
    assert block.read_path("parameters/one") == b"[1, 2]"


def test_a_folder_is_a_local_file_system_block_and_another_folder_another_block(settings, tmp_path, monkeypatch):
    slugs = []
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv("AESQ_RESULT_STORAGE", str(tmp_path / name))
        get_settings.cache_clear()
        check_result_storage(get_settings())
        slugs.append(result_storage_block(get_settings()))
        block = LocalFileSystem.load(slugs[-1].partition("/")[2])
        assert block.basepath == str(tmp_path / name)
    assert slugs[0] != slugs[1]


@pytest.mark.parametrize(
    ("location", "message"),
    [
        (
            "s3://no-such-results/prefect",
            "AESQ_RESULT_STORAGE: s3://no-such-results/: no such bucket 'no-such-results'",
        ),
        ("/no/such/folder", "AESQ_RESULT_STORAGE: '/no/such/folder': no such folder"),
    ],
)
def test_a_storage_that_is_not_there_is_said_at_start_up(settings, monkeypatch, location, message):
    monkeypatch.setenv("AESQ_RESULT_STORAGE", location)
    get_settings.cache_clear()
    with pytest.raises(SourceError) as raised:
        check_result_storage(get_settings())
    assert str(raised.value).startswith(message)
