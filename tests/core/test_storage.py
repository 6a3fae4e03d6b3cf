"""Sources against a real S3 server (moto) and real local folders: opening, listing, reading, sidecars."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid

import pytest

from aesq.core.config import ConfigurationError
from aesq.core.storage import (
    CredentialsRefused,
    FolderSource,
    Location,
    NotAnS3Endpoint,
    ObjectInfo,
    ObjectMissing,
    ObjectStoreUnreachable,
    RecentObjects,
    S3Source,
    SourceError,
    StoredObject,
    check_source,
    load_file,
    open_source,
    parse_location,
    save_file,
)
from tests.helpers import free_port, put, sidecar_for, web_service


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://images/team/raw/", Location("s3", "images", "team/raw/")),
        ("s3://images", Location("s3", "images", "")),
        ("s3://images/", Location("s3", "images", "")),
    ],
)
def test_parse_s3_uri(uri, expected):
    assert parse_location(uri) == expected


def test_parse_folder_expands_home_and_makes_it_absolute(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert parse_location("~/pics/../pics") == Location("file", str(tmp_path / "pics"))
    assert parse_location("pics") == Location("file", str(tmp_path / "pics"))
    # `~name` of a user nobody has is a folder of that name, as a shell leaves it (it raised RuntimeError: a 500)
    assert parse_location("~nobody-such-user/pics") == Location("file", str(tmp_path / "~nobody-such-user" / "pics"))


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("s3://ab/prefix", "at least 3 characters"),
        ("s3:///prefix", "at least 3 characters"),
        ("gs://bucket/prefix", "a source is s3://bucket/prefix or a local folder"),
        ("http://host/bucket", "a source is s3://bucket/prefix or a local folder"),
    ],
)
def test_parse_errors(uri, message):
    with pytest.raises(SourceError, match=message):
        parse_location(uri)


def test_location_names_a_file_under_its_prefix():
    assert [Location("s3", "bucket", prefix).key_for("r.html") for prefix in ("", "reports", "reports/")] == [
        "r.html",
        "reports/r.html",
        "reports/r.html",
    ]
    assert Location("s3", "bucket", "team/raw/").uri == "s3://bucket/team/raw/"


def test_open_s3_uri(settings):
    source = open_source("s3://images/team/raw/", settings)
    assert isinstance(source, S3Source)
    assert (source.storage, source.bucket, source.prefix, source.uri) == (
        "s3",
        "images",
        "team/raw/",
        "s3://images/team/raw/",
    )
    assert source.location == parse_location(source.uri)


def test_open_folder(settings, tmp_path, monkeypatch):
    (tmp_path / "pics").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path))
    source = open_source("~/pics/../pics", settings)
    assert isinstance(source, FolderSource)
    assert (source.storage, source.bucket, source.prefix, source.uri) == (
        "file",
        str(tmp_path / "pics"),
        "",
        str(tmp_path / "pics"),
    )


@pytest.mark.parametrize("uri", ["{tmp}/absent", "{tmp}/a-file"])
def test_a_source_folder_must_exist(settings, tmp_path, uri):
    (tmp_path / "a-file").write_bytes(b"x")
    with pytest.raises(SourceError, match="no such folder"):
        open_source(uri.format(tmp=tmp_path), settings)


def test_missing_bucket_is_a_source_error_naming_it(settings):
    name = f"absent-{uuid.uuid4().hex[:10]}"
    with pytest.raises(SourceError, match=name):
        list(open_source(f"s3://{name}/images/", settings).list())


def test_a_missing_bucket_is_found_by_the_check_and_is_configuration(settings):
    name = f"absent-{uuid.uuid4().hex[:10]}"
    with pytest.raises(SourceError) as raised:
        check_source(f"s3://{name}/images/", settings)
    assert isinstance(raised.value, ConfigurationError)
    assert str(raised.value) == (
        f"s3://{name}/: no such bucket {name!r} at {settings.s3_endpoint} (AESQ_S3_ENDPOINT): create it, or fix the name"
    )


def test_an_endpoint_that_does_not_answer_is_named_by_the_check_without_urllib3_retry_warnings(settings, caplog):
    endpoint = f"127.0.0.1:{free_port()}"
    elsewhere = settings.model_copy(update={"s3_endpoint": endpoint})
    with caplog.at_level(logging.DEBUG, logger="urllib3"), pytest.raises(ObjectStoreUnreachable) as raised:
        check_source("s3://images/", elsewhere)
    assert str(raised.value).startswith(
        f"cannot reach the object store at {endpoint} (AESQ_S3_ENDPOINT): is it running?"
    )
    assert "Connection refused" in str(raised.value)
    assert isinstance(raised.value, ConnectionError), "an outage: the tasks retry it"
    assert not [record for record in caplog.records if "Retrying" in record.getMessage()]


@pytest.mark.parametrize(
    ("status", "content_type", "body", "answer"),
    [
        (404, "application/json", b'{"detail":"Not Found"}', "HTTP 404, application/json"),  # another web API
        (200, "text/html", b"<!doctype html><html><body>MinIO Console</body></html>", "not S3's XML"),  # a console
    ],
)
def test_an_endpoint_that_answers_but_not_as_s3_names_the_setting_and_the_api_port(
    settings, status, content_type, body, answer
):
    with web_service(status, content_type, body) as endpoint:
        source = open_source("s3://images/", settings.model_copy(update={"s3_endpoint": endpoint}))
        for attempt in (source.check, lambda: list(source.list())):
            with pytest.raises(NotAnS3Endpoint) as raised:
                attempt()
            assert isinstance(raised.value, ConfigurationError), "a wrong port is not retried"
            assert str(raised.value) == (
                f"{endpoint} (AESQ_S3_ENDPOINT) answered, but not as an S3 server ({answer}): is this the S3 API "
                "port? MinIO's API is usually :9000, its console :9001"
            )


def test_refused_credentials_are_configuration_naming_the_key_settings(settings, bucket, s3_checks_credentials):
    source = open_source(f"s3://{bucket}/", settings)
    for attempt in (source.check, lambda: list(source.list()), lambda: source.read("any")):
        with pytest.raises(CredentialsRefused, match=r"check AESQ_S3_ACCESS_KEY and AESQ_S3_SECRET_KEY$") as raised:
            attempt()
        assert isinstance(raised.value, ConfigurationError)
        assert str(raised.value).startswith(
            f"{settings.s3_endpoint} refused access to s3://{bucket}/ (InvalidAccessKeyId: "
        )


def test_a_folder_source_is_checked_by_listing_it(tmp_path, settings):
    (tmp_path / "a.png").write_bytes(b"x")
    assert check_source(str(tmp_path), settings).uri == str(tmp_path)
    with pytest.raises(SourceError, match="no such folder"):
        check_source(str(tmp_path / "absent"), settings)


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


# --- aesq's own outputs: one write path for reports and exports, complete or not at all -------------


def test_a_report_saved_to_s3_loads_back_from_the_uri_it_was_saved_at(settings, s3_client, bucket):
    uri = save_file(f"s3://{bucket}/reports", "r.html", b"<html>1</html>", "text/html", settings)
    assert uri == f"s3://{bucket}/reports/r.html"
    assert load_file(uri, settings) == b"<html>1</html>"
    stat = s3_client.stat_object(bucket, "reports/r.html")
    assert stat.content_type == "text/html"


def test_a_report_saved_to_a_folder_makes_it_and_loads_back(settings, tmp_path):
    uri = save_file(str(tmp_path / "out" / "reports"), "r.html", b"<html>1</html>", "text/html", settings)
    assert uri == str(tmp_path / "out" / "reports" / "r.html")
    assert load_file(uri, settings) == b"<html>1</html>"
    assert (tmp_path / "out" / "reports" / "r.html").stat().st_mode & 0o777 == 0o666 & ~_current_umask()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_missing_saved_file_is_object_missing(settings, tmp_path, bucket):
    with pytest.raises(ObjectMissing):
        load_file(str(tmp_path / "gone.html"), settings)
    with pytest.raises(ObjectMissing):
        load_file(f"s3://{bucket}/gone.html", settings)


@pytest.mark.parametrize("storage", ["s3", "file"])
def test_a_write_that_fails_midway_leaves_the_previous_object_and_no_partial_one(
    settings, s3_client, bucket, tmp_path, storage
):
    uri = f"s3://{bucket}/out" if storage == "s3" else str(tmp_path / "out")
    source = open_source(uri, settings) if storage == "s3" else FolderSource(tmp_path / "out")
    key = source.location.key_for("manifest.jsonl")
    source.write(key, b"complete\n", "application/jsonl")
    with pytest.raises(RuntimeError), source.writing(key, "application/jsonl") as handle:
        handle.write(b"half of a new ")
        raise RuntimeError("the export failed")
    assert source.read(key).data == b"complete\n"
    assert [item.key for item in source.list()] == [key]  # no temporary file left beside it


def test_a_folder_write_outside_the_folder_is_refused(tmp_path):
    with pytest.raises(ObjectMissing, match="outside"):
        FolderSource(tmp_path / "root").write("../escape.txt", b"x", "text/plain")
    assert not (tmp_path / "escape.txt").exists()


@pytest.mark.parametrize("key", ["sub/..", ".", "sub/../.."])
def test_a_folder_write_over_a_folder_is_refused(tmp_path, key):
    (tmp_path / "root" / "sub").mkdir(parents=True)
    with pytest.raises(ObjectMissing, match="outside"):
        FolderSource(tmp_path / "root").write(key, b"x", "text/plain")


def test_a_folder_write_replaces_a_link_instead_of_following_it(tmp_path):
    """A user's --out path may be a link (to a file elsewhere): it is replaced, as `mv` would, not refused."""
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("old")
    root = tmp_path / "root"
    root.mkdir()
    (root / "out.txt").symlink_to(elsewhere)
    FolderSource(root).write("out.txt", b"new", "text/plain")
    assert not (root / "out.txt").is_symlink() and (root / "out.txt").read_bytes() == b"new"
    assert elsewhere.read_text() == "old"


def test_writing_to_a_missing_bucket_is_a_source_error(settings):
    name = f"absent-{uuid.uuid4().hex[:10]}"
    with pytest.raises(SourceError, match=name):
        save_file(f"s3://{name}/reports", "r.html", b"x", "text/html", settings)
