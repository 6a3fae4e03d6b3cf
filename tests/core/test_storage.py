"""Sources against a real S3 server (moto) and real local folders: opening, listing, reading, sidecars."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

import pytest

from aesq.core.storage import (
    FolderSource,
    ObjectInfo,
    ObjectMissing,
    RecentObjects,
    S3Source,
    SourceError,
    StoredObject,
    open_source,
)
from tests.helpers import put, sidecar_for


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_open_s3_uri(settings):
    source = open_source("s3://images/team/raw/", settings)
    assert isinstance(source, S3Source)
    assert (source.storage, source.bucket, source.prefix, source.uri) == (
        "s3",
        "images",
        "team/raw/",
        "s3://images/team/raw/",
    )


def test_open_s3_uri_without_prefix(settings):
    source = open_source("s3://images", settings)
    assert (source.bucket, source.prefix) == ("images", "")


def test_open_folder(tmp_path, monkeypatch):
    (tmp_path / "pics").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    source = open_source("~/pics/../pics")
    assert isinstance(source, FolderSource)
    assert (source.storage, source.bucket, source.prefix, source.uri) == (
        "file",
        str(tmp_path / "pics"),
        "",
        str(tmp_path / "pics"),
    )


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://ab/prefix", "at least 3 characters"),
        ("s3:///prefix", "at least 3 characters"),
        ("gs://bucket/prefix", "a source is s3://bucket/prefix or a local folder"),
        ("http://host/bucket", "a source is s3://bucket/prefix or a local folder"),
        ("{tmp}/absent", "no such folder"),
        ("{tmp}/a-file", "no such folder"),
    ],
)
def test_open_source_errors(tmp_path, uri, message):
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(SourceError, match=message):
        open_source(uri.format(tmp=tmp_path))


def test_missing_bucket_is_a_source_error_naming_it(settings):
    name = f"absent-{uuid.uuid4().hex[:10]}"
    with pytest.raises(SourceError, match=name):
        list(open_source(f"s3://{name}/images/", settings).list())


def test_s3_list_is_recursive_under_the_prefix_with_etags_and_sizes(settings, s3_client, bucket):
    payloads = {
        "set/a.png": b"a" * 10,
        "set/sub/b.jpg": b"bb" * 20,
        "set/sub/b.jpg.json": b'{"seed": 1}',
        "other/c.png": b"c",
        "settings.png": b"d",
    }
    for key, payload in payloads.items():
        put(s3_client, bucket, key, payload)
    listed = sorted(open_source(f"s3://{bucket}/set/", settings).list(), key=lambda item: item.key)
    assert listed == [
        ObjectInfo(key=key, etag=_md5(payloads[key]), size=len(payloads[key]))
        for key in ("set/a.png", "set/sub/b.jpg", "set/sub/b.jpg.json")
    ]


def test_s3_read_returns_bytes_etag_and_user_metadata(settings, s3_client, bucket):
    payload = b"\x89PNG not really"
    put(s3_client, bucket, "gen/a.png", payload, metadata={"Generator": "sdxl:1.0", "prompt": "A Red Fox"})
    stored = open_source(f"s3://{bucket}", settings).read("gen/a.png")
    assert stored.data == payload
    assert stored.etag == _md5(payload)
    assert stored.metadata == {"generator": "sdxl:1.0", "prompt": "A Red Fox"}


def test_s3_read_missing_key_raises_object_missing(settings, bucket):
    with pytest.raises(ObjectMissing, match=f"s3://{bucket}/gone.png"):
        open_source(f"s3://{bucket}", settings).read("gone.png")


@pytest.mark.parametrize(
    ("listed", "expected"),
    [
        ({"dir/a.png", "dir/a.png.json"}, "dir/a.png.json"),
        ({"dir/a.png", "dir/a.json"}, "dir/a.json"),
        ({"dir/a.png", "dir/a.png.json", "dir/a.json"}, "dir/a.png.json"),
        ({"dir/a.png", "a.json", "dir/b.json"}, None),
    ],
    ids=["full-name", "stem", "full-name-preferred", "none"],
)
def test_sidecar_for(listed, expected):
    assert sidecar_for("dir/a.png", listed) == expected


def test_recent_objects_hand_over_once_with_matching_etag_within_budget(tmp_path):
    source = FolderSource(tmp_path)
    recent = RecentObjects(max_bytes=10)
    recent.put(source, "a", StoredObject(b"123456", "e1", {}))
    assert recent.take(source, "a", "other-etag") is None  # changed since ingest: download again
    recent.put(source, "a", StoredObject(b"123456", "e1", {}))
    recent.put(source, "b", StoredObject(b"7890", "e2", {}))
    assert recent.take(source, "a", "e1").data == b"123456"
    assert recent.take(source, "a", "e1") is None
    recent.put(source, "c", StoredObject(b"abcdefgh", "e3", {}))  # over budget: the oldest goes
    assert recent.take(source, "b", "e2") is None
    assert recent.take(source, "c", "e3").data == b"abcdefgh"


def test_folder_lists_regular_files_with_relative_posix_keys(tmp_path):
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "a.png").write_bytes(b"aaa")
    (tmp_path / "sub" / "deeper" / "b.jpg").write_bytes(b"bbbbb")
    os.mkfifo(tmp_path / "sub" / "pipe.png")
    listed = {item.key: item.size for item in FolderSource(tmp_path).list()}
    assert listed == {"a.png": 3, "sub/deeper/b.jpg": 5}


def test_folder_list_skips_dangling_symlinks(tmp_path):
    (tmp_path / "a.png").write_bytes(b"aaa")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "deleted.png")
    assert [item.key for item in FolderSource(tmp_path).list()] == ["a.png"]


def test_folder_that_cannot_be_listed_fails_the_listing_instead_of_listing_nothing(tmp_path):
    """An unmounted or vanished folder must not make every known object look deleted."""
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"x")
    source = FolderSource(root)
    (root / "a" / "x.jpg").unlink()
    (root / "a").rmdir()
    root.rmdir()
    with pytest.raises(FileNotFoundError):
        list(source.list())


def test_folder_etag_is_stable_and_changes_with_the_file(tmp_path):
    image = tmp_path / "a.png"
    image.write_bytes(b"first")
    source = FolderSource(tmp_path)
    [before] = source.list()
    assert [item.etag for item in source.list()] == [before.etag]
    assert source.read("a.png").etag == before.etag
    image.write_bytes(b"second version")
    [after] = source.list()
    assert after.etag != before.etag
    assert source.read("a.png").etag == after.etag


def test_folder_read(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"pixels")
    stored = FolderSource(tmp_path).read("sub/a.png")
    assert (stored.data, stored.metadata) == (b"pixels", {})


@pytest.mark.parametrize("key", ["../outside.png", "sub/../../outside.png", "{tmp}/outside.png"])
def test_folder_read_refuses_paths_outside_the_root(tmp_path, key):
    (tmp_path / "outside.png").write_bytes(b"secret")
    (tmp_path / "root" / "sub").mkdir(parents=True)
    with pytest.raises(ObjectMissing, match="outside"):
        FolderSource(tmp_path / "root").read(key.format(tmp=tmp_path))


@pytest.mark.parametrize("key", ["gone.png", "sub"])
def test_folder_read_missing_file_raises_object_missing(tmp_path, key):
    (tmp_path / "sub").mkdir()
    with pytest.raises(ObjectMissing, match="no longer exists"):
        FolderSource(tmp_path).read(key)


def test_s3_reads_from_every_fetch_thread_of_every_batch_share_one_pool(settings, s3_client, bucket, caplog):
    """32 reads at once (4 batches x 8 fetch threads) reuse pooled connections instead of dropping extras."""
    from concurrent.futures import ThreadPoolExecutor

    for index in range(32):
        put(s3_client, bucket, f"k{index}", os.urandom(200_000))
    source = open_source(f"s3://{bucket}/", settings)
    with caplog.at_level(logging.WARNING, logger="urllib3"), ThreadPoolExecutor(32) as pool:
        for _ in range(3):
            list(pool.map(lambda index: source.read(f"k{index}"), range(32)))
    assert not [record for record in caplog.records if "pool is full" in record.getMessage()]
