"""Fetching an asset's image from real storage (moto S3, local folders): the bytes ingested, decoded, or a
typed reason why not, with the words stored as the asset's error."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from aesq.core.fetch import Cause, Unreadable, fetch_and_decode, fetch_assets
from aesq.core.images import pixel_budget
from aesq.core.storage import FolderSource, StoredObject, open_source, recent_objects
from tests.helpers import jpeg_bytes, noise_image, put

BUDGET = pixel_budget(64_000_000)


@dataclass(frozen=True)
class AssetRow:
    """The columns of an `assets` row that fetching reads."""

    storage: str
    bucket: str
    key: str
    etag: str | None
    sha256: str


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_ingested_bytes_decode_to_the_image(tmp_path):
    payload = jpeg_bytes(noise_image(1, 48))
    (tmp_path / "a.jpg").write_bytes(payload)
    image = fetch_and_decode(FolderSource(tmp_path), "a.jpg", None, _sha(payload), 10**8, BUDGET)
    assert not isinstance(image, Unreadable)
    assert (image.mode, image.size) == ("RGB", (48, 48))


def test_a_missing_object_is_unreadable_for_now(settings, bucket):
    unreadable = fetch_and_decode(open_source(f"s3://{bucket}", settings), "gone.jpg", None, "0" * 64, 10**8, BUDGET)
    assert unreadable == Unreadable(Cause.MISSING, f"object s3://{bucket}/gone.jpg no longer exists")
    assert unreadable.transient


def test_other_bytes_than_ingested_are_unreadable_for_now(settings, s3_client, bucket):
    put(s3_client, bucket, "a.jpg", jpeg_bytes(noise_image(2)))
    unreadable = fetch_and_decode(
        open_source(f"s3://{bucket}", settings), "a.jpg", None, _sha(b"what was ingested"), 10**8, BUDGET
    )
    assert unreadable == Unreadable(
        Cause.CHANGED, "a.jpg holds other bytes than were ingested (overwritten since); re-ingested on the next run"
    )
    assert unreadable.transient


def test_an_image_over_the_pixel_limit_is_unreadable_for_good(tmp_path):
    payload = jpeg_bytes(noise_image(3, 64))
    (tmp_path / "big.jpg").write_bytes(payload)
    unreadable = fetch_and_decode(FolderSource(tmp_path), "big.jpg", None, _sha(payload), 1000, BUDGET)
    assert unreadable == Unreadable(
        Cause.UNDECODABLE, "64x64 = 4,096 pixels exceeds the limit of 1,000 (decompression bomb?)"
    )
    assert isinstance(unreadable, Unreadable) and not unreadable.transient


def test_a_storage_failure_is_told_apart_from_a_missing_object(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "not-a-folder").write_bytes(b"x")
    unreadable = fetch_and_decode(FolderSource(tmp_path / "root"), "not-a-folder/a.jpg", None, "0" * 64, 10**8, BUDGET)
    assert isinstance(unreadable, Unreadable)
    assert unreadable.cause is Cause.STORAGE_FAILED and unreadable.transient
    assert unreadable.reason.startswith("cannot read not-a-folder/a.jpg: ")


def test_fetch_assets_keeps_order_and_counts_only_storage_reads(settings, tmp_path):
    payloads = {name: jpeg_bytes(noise_image(seed, 32)) for seed, name in enumerate(["a.jpg", "b.jpg", "c.jpg"])}
    for name, payload in payloads.items():
        (tmp_path / name).write_bytes(payload)
    source = FolderSource(tmp_path)
    etags = {name: source.read(name).etag for name in payloads}
    rows = [AssetRow("file", str(tmp_path), name, etags[name], _sha(payload)) for name, payload in payloads.items()]
    rows.append(AssetRow("file", str(tmp_path), "gone.jpg", None, "0" * 64))
    recent_objects.put(source, "b.jpg", StoredObject(payloads["b.jpg"], etags["b.jpg"], {}))  # ingest's copy

    images, reads = fetch_assets(rows, settings)

    assert [isinstance(image, Unreadable) for image in images] == [False, False, False, True]
    assert [image.size for image in images[:3] if not isinstance(image, Unreadable)] == [(32, 32)] * 3
    assert reads == 3  # a.jpg, c.jpg and the attempt at gone.jpg; b.jpg came from memory
