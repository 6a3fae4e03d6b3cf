"""Discovery on the real components (moto S3, folders, embedded Postgres): paged listings checked in the
database, sidecars across pages, deletions after full listings, ordered sources polled from a cursor, and
memory that does not grow with the source."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from aesq.core import database, discovery, ingest
from aesq.core.claims import claim_objects
from aesq.core.config import get_settings
from aesq.core.database import get_engine
from aesq.core.storage import (
    FolderSource,
    is_sidecar,
    open_source,
    sidecar_candidates,
)
from tests.helpers import ingest_all, jpeg_bytes, noise_image, put, sidecar_for

IMAGES = {seed: jpeg_bytes(noise_image(seed, 32)) for seed in range(8)}


def _queue(settings) -> dict[str, sa.Row]:
    with get_engine(settings).connect() as connection:
        return {
            row.key: row
            for row in connection.execute(sa.text("SELECT key, etag, sidecar, changed, listed FROM ingest_queue"))
        }


def _statuses(settings) -> dict[str, str]:
    with get_engine(settings).connect() as connection:
        return dict(connection.execute(sa.text("SELECT key, status FROM assets")).all())


def _expected_queue(keys: list[str]) -> dict[str, str | None]:
    """What a listing of `keys` (none of them known) must queue: every image with its sidecar as
    `sidecar_for` finds it among all the keys."""
    listed = set(keys)
    return {key: sidecar_for(key, listed) for key in keys if not is_sidecar(key)}


def _ordered(monkeypatch, source: str):
    monkeypatch.setenv("AESQ_ORDERED_SOURCES", source)
    get_settings.cache_clear()
    return get_settings()


def test_new_changed_restored_and_deleted_objects(settings, s3_client, bucket):
    source = f"s3://{bucket}/"
    for name, seed in (("a", 0), ("b", 1), ("c", 2)):
        put(s3_client, bucket, f"m/{name}.jpg", IMAGES[seed])
    put(s3_client, bucket, "m/a.json", b'{"prompt": "a"}')
    ingest_all(source, settings)
    assert _statuses(settings) == dict.fromkeys(["m/a.jpg", "m/b.jpg", "m/c.jpg"], "pending")
    assert _queue(settings) == {}

    put(s3_client, bucket, "m/b.jpg", IMAGES[3])  # changed bytes
    s3_client.remove_object(bucket, "m/c.jpg")  # deleted
    put(s3_client, bucket, "m/d.jpg", IMAGES[4])  # new
    found = discovery.discover(source, settings)

    queue = _queue(settings)
    assert {key: (row.changed, row.sidecar) for key, row in queue.items()} == {
        "m/b.jpg": (True, None),
        "m/d.jpg": (False, None),
    }
    assert queue["m/b.jpg"].etag == s3_client.stat_object(bucket, "m/b.jpg").etag.strip('"')
    assert (found.listed, found.queued, found.deleted, found.full) == (4, 2, 1, True)
    assert _statuses(settings)["m/c.jpg"] == "deleted"

    ingest_all(source, settings)  # takes the queue; listing again finds nothing more
    assert discovery.discover(source, settings) == discovery.Discovered(listed=4, queued=0, deleted=0, full=True)

    put(s3_client, bucket, "m/c.jpg", IMAGES[2])  # back after being deleted: queued, not as a change
    found = discovery.discover(source, settings)
    assert {key: row.changed for key, row in _queue(settings).items()} == {"m/c.jpg": False}
    assert (found.queued, found.deleted) == (1, 0)
    ingest_all(source, settings)
    assert _statuses(settings)["m/c.jpg"] == "pending"


def test_only_the_prefix_is_listed_and_only_its_assets_can_be_deleted(settings, s3_client, bucket):
    put(s3_client, bucket, "in/a.jpg", IMAGES[0])
    put(s3_client, bucket, "out/b.jpg", IMAGES[1])
    ingest_all(f"s3://{bucket}/", settings)
    s3_client.remove_object(bucket, "in/a.jpg")

    found = discovery.discover(f"s3://{bucket}/out/", settings)

    assert (found.listed, found.deleted) == (1, 0)
    assert _statuses(settings) == {"in/a.jpg": "pending", "out/b.jpg": "pending"}
    assert discovery.discover(f"s3://{bucket}/in/", settings).deleted == 1


def test_deletions_are_marked_in_chunks_of_their_own_transactions(settings, tmp_path, monkeypatch):
    for seed in range(5):
        (tmp_path / f"{seed}.jpg").write_bytes(IMAGES[seed])
    ingest_all(str(tmp_path), settings)
    for seed in range(5):
        (tmp_path / f"{seed}.jpg").unlink()
    monkeypatch.setattr(discovery, "DELETIONS_PER_TRANSACTION", 2)

    assert discovery.discover(str(tmp_path), settings).deleted == 5
    assert set(_statuses(settings).values()) == {"deleted"}
    assert discovery.discover(str(tmp_path), settings).deleted == 0  # already deleted stays so


# Sidecars sort after their image (`b.png.json`) or, for an image of a name later than `.json`
# (`b.avif` < `b.json`), pages after it; `b.png` has `b.json` before it.
PAGED_KEYS = [
    "a/b.avif",
    "a/b.avif.txt",
    "a/b.gif",
    "a/b.json",
    "a/b.png",
    "a/c.png",
    "a/c.png.json",
    "a/d",
    "a/d-1.png",
    "a/d.json",
    "e.png",
    "e.png.json",
    "e.json",
    "f.webp",
]


@pytest.mark.parametrize("page_size", [1, 2, 3, 100])
def test_sidecars_listed_pages_after_their_images_are_found(settings, s3_client, bucket, page_size):
    for key in PAGED_KEYS:
        put(s3_client, bucket, key, b"x")

    found = discovery.discover(f"s3://{bucket}/", settings, page_size=page_size)

    queue = _queue(settings)
    assert {key: row.sidecar for key, row in queue.items()} == _expected_queue(PAGED_KEYS)
    assert queue["a/b.avif"].sidecar == "a/b.json" and queue["a/c.png"].sidecar == "a/c.png.json"
    assert queue["a/d"].sidecar == "a/d.json" and queue["a/d-1.png"].sidecar is None
    assert all(row.listed for row in queue.values())
    assert (found.listed, found.queued) == (len(PAGED_KEYS), len(_expected_queue(PAGED_KEYS)))


def test_sidecars_of_random_keys_match_sidecar_for_over_the_whole_listing(settings, s3_client, bucket):
    """Keys drawn from characters around '.' and '/' in code point order, some non-ASCII, listed in pages of
    1 to 7: every image is queued once, with the sidecar `sidecar_for` finds among all the keys."""
    rng = random.Random(12)
    parts = ["a", "a.b", "a-", "a.json", "é", "Z", "a.png", "b.json", "a.png.json", "a.JSON", ""]
    keys = sorted(
        {
            "/".join(
                rng.choice(parts) + rng.choice(["", ".png", ".json", ".avif", "-1", ".png.json"])
                for _ in range(rng.randint(1, 3))
            ).strip("/")
            or "x"
            for _ in range(80)
        }
    )
    keys = [key for key in keys if "//" not in key]
    for key in keys:
        put(s3_client, bucket, key, b"x")
    expected = _expected_queue(keys)
    assert sum(sidecar is not None for sidecar in expected.values()) >= 5, "the draw has sidecars to find"

    for page_size in (1, 2, 3, 7):
        with get_engine(settings).begin() as connection:
            connection.execute(sa.text("TRUNCATE ingest_queue"))
        discovery.discover(f"s3://{bucket}/", settings, page_size=page_size)
        assert {key: row.sidecar for key, row in _queue(settings).items()} == expected, page_size


@pytest.mark.parametrize(
    "key",
    [
        "a/b.png",
        "b.png",
        "a/b",
        "a/.hidden",
        "a/b.",
        "a/b.tar.gz",
        "a.b/c",
        "a//b.png",
        "a/./b.png",
        "./b.png",
        "/a/b.png",
        "a/b.png/",
        "é/ß.PNG",
        "a/..png",
        "a/b..png",
        "..",
        "a/..",
    ],
)
def test_sidecar_candidates_of_a_key_are_those_of_storage(key):
    try:
        expected = tuple(sidecar_candidates(key))
    except ValueError:
        expected = (f"{key}.json", f"{key}.json")
    assert discovery._candidates(key) == expected


FOLDER_KEYS = ["a.png", "a-b.png", "a/b.png", "a/b/c.png", "a0.png", "A.png", "é.png", "z/é/x.png", "a/.hidden"]


def test_folder_lists_in_the_binary_key_order_of_s3_and_skips_up_to_the_cursor(tmp_path, s3_client, bucket):
    for key in FOLDER_KEYS:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x")
        put(s3_client, bucket, key, b"x")
    s3_order = [item.object_name for item in s3_client.list_objects(bucket, recursive=True)]
    folder = FolderSource(tmp_path)

    listed = [item.key for item in folder.list()]

    assert listed == s3_order == sorted(FOLDER_KEYS, key=lambda key: key.encode())
    for cursor in [*listed, "", "a", "a/", "a/b", "a/b/", "b", "zz"]:
        assert [item.key for item in folder.list(start_after=cursor)] == [key for key in listed if key > cursor], cursor


def test_folder_listing_after_a_cursor_does_not_enter_directories_before_it(tmp_path, monkeypatch):
    for directory in ("2026-11-01", "2026-11-02", "2026-11-03"):
        (tmp_path / directory).mkdir()
        for index in range(3):
            (tmp_path / directory / f"{index}.png").write_bytes(b"x")
    entered = []
    walk = FolderSource._walk
    monkeypatch.setattr(FolderSource, "_walk", lambda self, d, p, s: (entered.append(p), walk(self, d, p, s))[1])

    keys = [item.key for item in FolderSource(tmp_path).list(start_after="2026-11-02/1.png")]

    assert keys == ["2026-11-02/2.png", "2026-11-03/0.png", "2026-11-03/1.png", "2026-11-03/2.png"]
    assert entered == ["", "2026-11-02/", "2026-11-03/"]


def test_each_page_is_committed_while_the_listing_goes_on(settings, tmp_path, monkeypatch):
    """Workers claim the first pages' objects before discovery has listed the rest."""
    for index in range(10):
        (tmp_path / f"{index}.png").write_bytes(b"x")
    source = str(tmp_path)
    seen_while_listing = []
    original = FolderSource.list

    def listing(self, start_after=None):
        for number, item in enumerate(original(self, start_after)):
            if number == 7:  # two pages of 3 are behind us
                with get_engine(settings).begin() as other:
                    seen_while_listing.extend(q.key for q in claim_objects(other, "file", str(tmp_path), "", 100, 60))
            yield item

    monkeypatch.setattr(FolderSource, "list", listing)
    discovery.discover(source, settings, page_size=3)

    # The third page (6.png, 7.png, 8.png) was not complete yet; 5.png waited for "5.png.json" to be passed.
    assert seen_while_listing == ["0.png", "1.png", "2.png", "3.png", "4.png"]


def test_an_ordered_source_is_polled_after_its_cursor_and_listed_whole_when_due(settings, tmp_path, monkeypatch):
    source = str(tmp_path)
    settings = _ordered(monkeypatch, source)
    (tmp_path / "2026-11-01").mkdir()
    for name in ("a", "b"):
        (tmp_path / "2026-11-01" / f"{name}.jpg").write_bytes(IMAGES[0 if name == "a" else 1])

    first = discovery.discover(source, settings)  # no cursor yet: a full listing
    assert (first.full, first.listed, first.queued) == (True, 2, 2)
    ingest_all(source, settings)  # discovers again: a poll after the cursor, nothing new
    assert _cursor(settings, source) == "2026-11-01/b.jpg"

    (tmp_path / "2026-11-02").mkdir()
    (tmp_path / "2026-11-02" / "c.jpg").write_bytes(IMAGES[2])
    (tmp_path / "2026-11-02" / "c.jpg.json").write_bytes(b"{}")
    (tmp_path / "2026-11-01" / "0-late.jpg").write_bytes(IMAGES[3])  # behind the cursor
    (tmp_path / "2026-11-01" / "a.jpg").unlink()  # deleted behind the cursor

    poll = discovery.discover(source, settings)

    assert (poll.full, poll.listed, poll.queued, poll.deleted) == (False, 2, 1, 0)  # only c.jpg and its sidecar
    assert {key: row.sidecar for key, row in _queue(settings).items()} == {"2026-11-02/c.jpg": "2026-11-02/c.jpg.json"}
    assert _cursor(settings, source) == "2026-11-02/c.jpg.json"
    assert _statuses(settings)["2026-11-01/a.jpg"] == "pending"
    assert discovery.discover(source, settings).listed == 0  # the next poll lists nothing

    with get_engine(settings).begin() as connection:  # a day later the full listing is due
        connection.execute(sa.text("UPDATE source_cursors SET full_listing_at = full_listing_at - interval '1 day'"))
    full = discovery.discover(source, settings)

    assert (full.full, full.listed, full.deleted) == (True, 4, 1)
    assert set(_queue(settings)) == {"2026-11-01/0-late.jpg", "2026-11-02/c.jpg"}
    assert _statuses(settings)["2026-11-01/a.jpg"] == "deleted"
    assert discovery.discover(source, settings).full is False  # and the polls resume


def test_an_ordered_s3_source_poll_lists_only_after_the_cursor(settings, s3_client, bucket, monkeypatch):
    source = f"s3://{bucket}/in/"
    settings = _ordered(monkeypatch, source)
    put(s3_client, bucket, "in/001.png", b"x")
    put(s3_client, bucket, "other/999.png", b"x")  # outside the prefix
    assert discovery.discover(source, settings).full is True
    put(s3_client, bucket, "in/000.png", b"x")  # behind the cursor: not seen by polls
    put(s3_client, bucket, "in/002.png", b"x")
    put(s3_client, bucket, "in/002.json", b"{}")

    poll = discovery.discover(source, settings)

    assert (poll.full, poll.listed) == (False, 2)
    assert {key: row.sidecar for key, row in _queue(settings).items()} == {
        "in/001.png": None,
        "in/002.png": "in/002.json",
    }


def test_a_poll_leaves_a_sidecar_behind_the_cursor_for_ingest_to_find(settings, s3_client, bucket, monkeypatch):
    """`x.json` sorts before `x.png`: uploaded first, a poll can list it before the image; the next poll,
    which lists the image, has not listed that candidate, so ingest looks for the sidecar itself."""
    source = f"s3://{bucket}/"
    settings = _ordered(monkeypatch, source)
    put(s3_client, bucket, "0.png", jpeg_bytes(noise_image(0, 32)))
    discovery.discover(source, settings)
    put(s3_client, bucket, "1.json", b'{"generator": {"name": "m", "version": "1"}}')
    discovery.discover(source, settings)
    put(s3_client, bucket, "1.png", IMAGES[1])

    assert discovery.discover(source, settings).full is False
    assert (_queue(settings)["1.png"].sidecar, _queue(settings)["1.png"].listed) == (None, False)
    ingest_all(source, settings)
    with get_engine(settings).connect() as connection:
        generator = connection.execute(
            sa.text("SELECT g.name FROM assets a JOIN generators g ON g.id = a.generator_id WHERE a.key = '1.png'")
        ).scalar_one()
    assert generator == "m"


def test_the_ordered_sources_setting_names_a_folder_however_written(settings, tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    settings = _ordered(monkeypatch, "./sub/")
    assert discovery.is_ordered(open_source(str(tmp_path / "sub"), settings), settings)
    assert not discovery.is_ordered(open_source(str(tmp_path), settings), settings)


def _cursor(settings, source: str) -> str | None:
    with get_engine(settings).connect() as connection:
        return connection.execute(
            sa.text("SELECT after_key FROM source_cursors WHERE source = :source"),
            {"source": open_source(source, settings).uri},
        ).scalar_one()


def _tiny_files(root: Path, count: int, per_directory: int = 500) -> None:
    for index in range(count):
        directory = root / f"d{index // per_directory:04d}"
        if index % per_directory == 0:
            directory.mkdir(parents=True)
        (directory / f"img-{index:07d}.png").touch()


# Peaks of traced Python allocations, measured in a process of their own: in the test process, threads other
# tests leave behind (servers, pools) allocate during the measurement and blur a 25 % bound.
DISCOVERY_MEMORY_PROBE = """
import gc, sys, tracemalloc
from pathlib import Path
from aesq.core import discovery
from aesq.core.config import get_settings
from aesq.core.storage import FolderSource

def peak(function):
    gc.collect()
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

warm, small, large = sys.argv[1:4]
settings = get_settings()
discovery.discover(warm, settings, page_size=500)  # imports and statement caches, outside the measure
small_peak = peak(lambda: discovery.discover(small, settings, page_size=500))
found = []
large_peak = peak(lambda: found.append(discovery.discover(large, settings, page_size=500)))
keys_peak = peak(lambda: {item.key: item for item in FolderSource(Path(large)).list()})
print(small_peak, large_peak, keys_peak, found[0].listed, found[0].queued)
"""


def test_assets_from_before_0013_adopt_their_listed_sidecars_without_being_ingested_again(
    settings, empty_database_url, s3_client, bucket, monkeypatch
):
    """A database upgraded from 0012 re-ingests no image for the sidecar it had then; a later change does."""
    monkeypatch.setenv("AESQ_DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    settings = get_settings()
    database.upgrade("0012", settings=settings)
    source = f"s3://{bucket}/"
    for seed, key in enumerate(("m/a.jpg", "m/b.jpg", "m/c.jpg", "m/d.jpg")):
        put(s3_client, bucket, key, IMAGES[seed])
    put(s3_client, bucket, "m/a.jpg.json", b'{"prompt": "a"}')
    put(s3_client, bucket, "m/c.json", b'{"prompt": "c"}')
    etags = {item.key: item.etag for item in open_source(source, settings).list()}
    with get_engine(settings).begin() as connection:  # as 0012's ingest left them
        connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, etag, size_bytes, source_kind, status)"
                " VALUES ('s3', :bucket, :key, :key, :etag, 1, 'generated', 'scored')"
            ),
            [{"bucket": bucket, "key": key, "etag": etags[key]} for key in ("m/a.jpg", "m/b.jpg", "m/c.jpg")],
        )
    database.upgrade(settings=settings)

    assert discovery.discover(source, settings, page_size=2).queued == 1  # only m/d.jpg, new
    with get_engine(settings).connect() as connection:
        recorded = {
            row.key: (row.sidecar_key, row.sidecar_etag)
            for row in connection.execute(sa.text("SELECT key, sidecar_key, sidecar_etag FROM assets"))
        }
    assert recorded == {
        "m/a.jpg": ("m/a.jpg.json", etags["m/a.jpg.json"]),
        "m/b.jpg": (None, None),
        "m/c.jpg": ("m/c.json", etags["m/c.json"]),
    }
    assert set(_queue(settings)) == {"m/d.jpg"}

    put(s3_client, bucket, "m/c.json", b'{"prompt": "another c"}')
    assert discovery.discover(source, settings).queued == 1
    assert set(_queue(settings)) == {"m/c.jpg", "m/d.jpg"}


def test_assets_from_before_0013_whose_listed_sidecar_may_be_missing_from_their_provenance_are_ingested_again(
    settings, empty_database_url, s3_client, bucket, monkeypatch
):
    """After an upgrade from 0012, an image stored crawled while a sidecar is listed (ingested before its
    sidecar arrived) and a failed one are ingested again, taking the sidecar's provenance; a crawled one
    with no sidecar listed and a generated one with its sidecar adopt what is listed."""
    monkeypatch.setenv("AESQ_DATABASE_URL", empty_database_url)
    get_settings.cache_clear()
    settings = get_settings()
    database.upgrade("0012", settings=settings)
    source = f"s3://{bucket}/"
    images = {"m/late.jpg": IMAGES[0], "m/failed.jpg": IMAGES[1], "m/plain.jpg": IMAGES[2], "m/gen.jpg": IMAGES[3]}
    for key, data in images.items():
        put(s3_client, bucket, key, data)
    put(s3_client, bucket, "m/late.jpg.json", b'{"generator": "sdxl", "generator_version": "1.0", "prompt": "late"}')
    put(s3_client, bucket, "m/failed.json", b'{"generator": "sdxl", "generator_version": "1.0", "seed": 7}')
    put(s3_client, bucket, "m/gen.jpg.json", b'{"generator": "sdxl", "generator_version": "1.0", "prompt": "gen"}')
    etags = {item.key: item.etag for item in open_source(source, settings).list()}
    stored = {  # as 0012's ingest left them: status, source kind, error
        "m/late.jpg": ("scored", "crawled", None),  # ingested from a notification before its sidecar was uploaded
        "m/failed.jpg": ("failed", "crawled", "seed must be an integer, got 'seven'"),  # its sidecar since fixed
        "m/plain.jpg": ("scored", "crawled", None),
        "m/gen.jpg": ("scored", "generated", None),
    }
    with get_engine(settings).begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO assets (storage, bucket, key, sha256, etag, size_bytes, source_kind, status, error)"
                " VALUES ('s3', :bucket, :key, :sha256, :etag, :size, :kind, :status, :error)"
            ),
            [
                {
                    "bucket": bucket,
                    "key": key,
                    "sha256": hashlib.sha256(images[key]).hexdigest(),
                    "etag": etags[key],
                    "size": len(images[key]),
                    "kind": kind,
                    "status": status,
                    "error": error,
                }
                for key, (status, kind, error) in stored.items()
            ],
        )
    database.upgrade(settings=settings)

    assert discovery.discover(source, settings, page_size=2).queued == 2
    assert set(_queue(settings)) == {"m/late.jpg", "m/failed.jpg"}
    while claimed := ingest.claim_batch(source, settings):
        ingest.ingest(source, claimed, settings)
    with get_engine(settings).connect() as connection:
        assets = {
            row.key: row
            for row in connection.execute(
                sa.text("SELECT key, status, source_kind, prompt, seed, sidecar_key, sidecar_etag FROM assets")
            )
        }
    assert {key: (row.source_kind, row.prompt, row.seed) for key, row in assets.items()} == {
        "m/late.jpg": ("generated", "late", None),
        "m/failed.jpg": ("generated", None, 7),
        "m/plain.jpg": ("crawled", None, None),
        "m/gen.jpg": ("generated", None, None),  # adopted as it stood: nothing read again
    }
    assert assets["m/failed.jpg"].status != "failed"
    assert {key: (row.sidecar_key, row.sidecar_etag) for key, row in assets.items()} == {
        "m/late.jpg": ("m/late.jpg.json", etags["m/late.jpg.json"]),
        "m/failed.jpg": ("m/failed.json", etags["m/failed.json"]),
        "m/plain.jpg": (None, None),
        "m/gen.jpg": ("m/gen.jpg.json", etags["m/gen.jpg.json"]),
    }
    assert discovery.discover(source, settings).queued == 0


@pytest.mark.slow
def test_discovery_memory_does_not_grow_with_the_source(settings, tmp_path):
    """Discovering 20,000 new files in pages of 500 peaks at about what 4,000 do (a page and the statements),
    far under what holding the listing's keys takes, as the placeholder did."""
    small, large = tmp_path / "small", tmp_path / "large"
    _tiny_files(small, 4_000)
    _tiny_files(large, 20_000)
    warm = tmp_path / "warm"
    _tiny_files(warm, 600)

    probe = subprocess.run(  # the settings fixture's AESQ_* environment goes with it
        [sys.executable, "-c", DISCOVERY_MEMORY_PROBE, str(warm), str(small), str(large)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    small_peak, large_peak, keys_peak, listed, queued = map(int, probe.stdout.split())

    assert (listed, queued) == (20_000, 20_000)
    assert large_peak < small_peak * 1.25, (small_peak, large_peak)
    assert large_peak < keys_peak / 4, (large_peak, keys_peak)
