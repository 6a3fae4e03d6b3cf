"""Storage access: S3/MinIO buckets through the `minio` SDK, and local folders, behind one `Source`.

A storage URI (`s3://bucket/prefix` or a folder path) is read in one place, `parse_location`, into a
`Location`; `open_location` gives its objects to list, read and write. Keys are always relative (the
object key, or the path below the folder), so provenance key layouts work the same for both. aesq's own
outputs (reports, exports) are written through `Source.writing` too: complete or not at all.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath
from stat import S_ISREG
from typing import IO, Literal
from urllib.parse import unquote_plus
from xml.etree import ElementTree

import certifi
import urllib3
from minio import Minio
from minio.error import InvalidResponseError, S3Error
from urllib3.exceptions import HTTPError

from aesq.core.config import ConfigurationError, Settings

SIDECAR_SUFFIX = ".json"
S3_CONNECTIONS = 64  # at least the flows' batches in flight (4) × fetch threads (8 by default)
S3_STALL_SECONDS = 60  # a read that stalls this long fails (and is retried)
S3_CONNECT_SECONDS = 3  # a server that does not accept a connection in this long is not there
S3_CONNECT_RETRIES = 1  # a refused or timed-out connection is tried once more, then the tasks' retries take over
_MISSING_CODES = {"NoSuchKey", "NoSuchObject"}
_CREDENTIAL_CODES = {"InvalidAccessKeyId", "SignatureDoesNotMatch"}

StorageKind = Literal["s3", "file"]


class SourceError(ConfigurationError):
    """A storage URI that cannot be used; the message says why."""


class ObjectMissing(LookupError):
    """The object was listed but is gone (deleted, or not yet visible): its asset is tried again later."""


class StorageUnavailable(ConnectionError):
    """The storage failed for every object asked of it: an outage, retried by the task."""


class BatchUnread(ConnectionError):
    """A pool's worker could not read a batch a flow handed it: they do not share Prefect's result storage
    (AESQ_RESULT_STORAGE), or it failed; retried, and its message says what to set."""


class ObjectStoreUnreachable(ConnectionError):
    """The S3 endpoint did not answer (refused, timed out, reset): transient, so tasks retry it."""


class CredentialsRefused(ConfigurationError):
    """The S3 endpoint refused aesq's access key or secret: configuration, never retried."""


class NotAnS3Endpoint(ConfigurationError):
    """Something answers at the S3 endpoint, but not as S3 does (a console, another service): configuration."""


# What reading one object raises when the storage (not the object's bytes) is the problem.
STORAGE_ERRORS = (S3Error, HTTPError, OSError)


def one_line(error: BaseException) -> str:
    """An exception's message on one line, for stored reasons and log lines."""
    return " ".join(str(error).split()) or type(error).__name__


@dataclass(frozen=True)
class Location:
    """Where objects live: a bucket and key prefix on S3, or a local folder (its absolute path, prefix "")."""

    storage: StorageKind
    bucket: str
    prefix: str = ""

    @property
    def uri(self) -> str:
        """The URI naming this location (normalised: a folder's absolute path)."""
        return f"s3://{self.bucket}/{self.prefix}" if self.storage == "s3" else self.bucket

    def key_for(self, name: str) -> str:
        """The key of a file named `name` placed under this location's prefix."""
        return str(PurePosixPath(self.prefix) / name) if self.prefix else name


def parse_location(uri: str) -> Location:
    """Read `s3://bucket/prefix` or a folder path (`~` expanded, made absolute); SourceError says what is wrong."""
    if uri.startswith("s3://"):
        bucket, _, prefix = uri.removeprefix("s3://").partition("/")
        if len(bucket) < 3:
            raise SourceError(f"{uri!r}: an S3 bucket name has at least 3 characters")
        return Location("s3", bucket, prefix)
    if "://" in uri:
        raise SourceError(f"{uri!r}: a source is s3://bucket/prefix or a local folder")
    try:
        folder = Path(uri).expanduser()
    except RuntimeError:  # `~name` of no known user stays a literal folder name, as in a shell
        folder = Path(uri)
    return Location("file", str(folder.resolve()))


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing tells about one object."""

    key: str
    etag: str | None
    size: int


@dataclass(frozen=True)
class StoredObject:
    """An object's bytes, ETag and user metadata (lower-case names without `x-amz-meta-`)."""

    data: bytes
    etag: str | None
    metadata: dict[str, str]


def is_sidecar(key: str) -> bool:
    """Sidecar JSON files carry provenance for the image beside them; they are not images."""
    return key.lower().endswith(SIDECAR_SUFFIX)


def sidecar_candidates(key: str) -> list[str]:
    """Where the sidecar of image `key` may be, in order of preference: `a/b.png.json`, then `a/b.json`."""
    return [f"{key}{SIDECAR_SUFFIX}", str(PurePosixPath(key).with_suffix(SIDECAR_SUFFIX))]


class Source:
    """The objects of a location (a bucket prefix or a folder): listed and read for ingest, written for aesq's
    own outputs."""

    storage: StorageKind
    bucket: str
    prefix: str

    @property
    def location(self) -> Location:
        """Where these objects live."""
        return Location(self.storage, self.bucket, self.prefix)

    @property
    def uri(self) -> str:
        """The URI this source was opened from (normalised)."""
        return self.location.uri

    def list(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        """Every object under the prefix, sidecars included, in binary (UTF-8 byte, i.e. code point) order
        of the keys, streamed; with `start_after`, only the keys that sort after it."""
        raise NotImplementedError

    def read(self, key: str) -> StoredObject:
        """The object's bytes and metadata; raises ObjectMissing when it is gone."""
        raise NotImplementedError

    def check(self) -> None:
        """List the first key, so an unreachable store, refused credentials or a missing bucket fail at once with
        what to do, before any long work."""
        next(iter(self.list()), None)

    def writing(self, key: str, content_type: str) -> AbstractContextManager[IO[bytes]]:
        """A binary handle whose bytes become object `key` when the block ends without an error: the object
        appears complete or not at all (a failed write leaves what was there)."""
        raise NotImplementedError

    def object_uri(self, key: str) -> str:
        """The URI of object `key`, as `load_file` reads it."""
        raise NotImplementedError

    def write(self, key: str, data: bytes, content_type: str) -> str:
        """Store `data` as object `key`; returns its URI."""
        with self.writing(key, content_type) as handle:
            handle.write(data)
        return self.object_uri(key)


class S3Source(Source):
    """Objects under a prefix of an S3/MinIO bucket."""

    storage = "s3"

    def __init__(self, client: Minio, bucket: str, prefix: str, endpoint: str = "the S3 endpoint") -> None:
        self.client, self.bucket, self.prefix, self.endpoint = client, bucket, prefix, endpoint

    @contextmanager
    def _explained(self, denied: set[str] = _CREDENTIAL_CODES) -> Iterator[None]:
        """Turn the SDK's errors that are about the store, not one object, into ones that say what to do: a
        missing bucket or refused credentials (`denied` codes) are configuration, an endpoint that does not
        answer an outage."""
        try:
            yield
        except S3Error as error:
            if error.code == "NoSuchBucket":
                raise SourceError(
                    f"s3://{self.bucket}/: no such bucket {self.bucket!r} at {self.endpoint} (AESQ_S3_ENDPOINT): "
                    "create it, or fix the name"
                ) from error
            if error.code in denied:
                raise CredentialsRefused(
                    f"{self.endpoint} refused access to s3://{self.bucket}/ ({error.code}: {error.message}): "
                    "check AESQ_S3_ACCESS_KEY and AESQ_S3_SECRET_KEY"
                ) from error
            raise
        except HTTPError as error:
            raise ObjectStoreUnreachable(
                f"cannot reach the object store at {self.endpoint} (AESQ_S3_ENDPOINT): is it running? "
                f"({_connection_cause(error)})"
            ) from error
        except (InvalidResponseError, ElementTree.ParseError) as error:
            answer = (
                f"HTTP {error._code}, {error._content_type or 'no content type'}"
                if isinstance(error, InvalidResponseError)
                else "not S3's XML"
            )
            raise NotAnS3Endpoint(
                f"{self.endpoint} (AESQ_S3_ENDPOINT) answered, but not as an S3 server ({answer}): is this the S3 "
                "API port? MinIO's API is usually :9000, its console :9001"
            ) from error

    def check(self) -> None:
        # Listing (unlike a HEAD request) has the server say which of bucket, key or signature is wrong;
        # denied access to the whole bucket is a matter of the credentials too.
        with self._explained(_CREDENTIAL_CODES | {"AccessDenied"}):
            next(iter(self.client.list_objects(self.bucket, prefix=self.prefix or None)), None)

    def list(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # S3 lists in UTF-8 byte order, 1000 keys a request; the SDK yields them request by request.
        with self._explained():
            for item in self.client.list_objects(
                self.bucket, prefix=self.prefix or None, recursive=True, start_after=start_after or None
            ):
                if not item.is_dir:
                    yield ObjectInfo(
                        key=item.object_name, etag=(item.etag or "").strip('"') or None, size=item.size or 0
                    )

    def read(self, key: str) -> StoredObject:
        try:
            with self._explained():
                response = self.client.get_object(self.bucket, key)
        except S3Error as error:
            if error.code in _MISSING_CODES:
                raise ObjectMissing(f"object s3://{self.bucket}/{key} no longer exists") from error
            raise
        try:
            data = response.read()
            metadata = {
                name.lower().removeprefix("x-amz-meta-"): value
                for name, value in response.headers.items()
                if name.lower().startswith("x-amz-meta-")
            }
        finally:
            response.close()
            response.release_conn()
        return StoredObject(data=data, etag=(response.headers.get("ETag") or "").strip('"') or None, metadata=metadata)

    @contextmanager
    def writing(self, key: str, content_type: str) -> Iterator[IO[bytes]]:
        # S3 makes an object visible only once its upload completes; the bytes wait in a temporary file till then.
        with tempfile.TemporaryFile() as pending:
            yield pending
            length = pending.seek(0, os.SEEK_END)
            pending.seek(0)
            with self._explained():
                self.client.put_object(self.bucket, key, pending, length, content_type=content_type)

    def object_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


def _is_directory(entry: os.DirEntry) -> bool:
    """A directory the listing descends into; links to directories are not followed (as `os.walk` does)."""
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _file_etag(stat: os.stat_result) -> str:
    """A change signal for local files, like an S3 ETag: modification time and size."""
    return f"{stat.st_mtime_ns:x}-{stat.st_size:x}"


class FolderSource(Source):
    """Files below a local folder (the embedded default); the folder plays the bucket."""

    storage = "file"

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.bucket, self.prefix = str(self.root), ""

    def list(self, start_after: str | None = None) -> Iterator[ObjectInfo]:
        # One directory's names at a time, never the whole tree: a directory sorts as its name plus "/"
        # among its siblings, so the keys come out in the same binary order as an S3 listing's.
        yield from self._walk(self.root, "", start_after)

    def _walk(self, directory: Path, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        """The files below `directory` (whose keys start with `prefix`), in key order, after `start_after`."""
        with os.scandir(directory) as scan:  # a folder that cannot be listed fails the listing
            entries = sorted(
                (
                    (f"{prefix}{entry.name}/" if _is_directory(entry) else f"{prefix}{entry.name}", entry)
                    for entry in scan
                ),
                key=lambda pair: pair[0],
            )
        for key, entry in entries:
            if key.endswith("/"):
                # Skip a subtree whose keys all sort before the cursor; enter the one holding the cursor.
                if start_after is None or key > start_after or start_after.startswith(key):
                    yield from self._walk(Path(entry.path), key, start_after)
                continue
            if start_after is not None and key <= start_after:
                continue
            try:
                stat = os.stat(entry.path)
            except FileNotFoundError:  # a dangling link, or deleted while we walked
                continue
            if not S_ISREG(stat.st_mode):  # sockets, pipes and devices are not images
                continue
            yield ObjectInfo(key=key, etag=_file_etag(stat), size=stat.st_size)

    def _path(self, key: str, *, replacing: bool = False) -> Path:
        """The file of `key`; ObjectMissing for a key that leads outside the folder. A file `replacing` is
        written over is checked by its folder only, so a link there is replaced rather than followed."""
        path = self.root / key
        path = path.parent.resolve() / path.name if replacing else path.resolve()
        if not path.is_relative_to(self.root) or path == self.root or path.name in ("", ".", ".."):
            raise ObjectMissing(f"{key} is outside {self.root}")
        return path

    def read(self, key: str) -> StoredObject:
        path = self._path(key)
        try:
            return StoredObject(data=path.read_bytes(), etag=_file_etag(path.stat()), metadata={})
        except (FileNotFoundError, IsADirectoryError) as error:
            raise ObjectMissing(f"file {path} no longer exists") from error

    @contextmanager
    def writing(self, key: str, content_type: str) -> Iterator[IO[bytes]]:
        # Written beside the target under a temporary name, then renamed over it in one step.
        path = self._path(key, replacing=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                yield handle
            os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes it 0600; give it an ordinary file's mode
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def object_uri(self, key: str) -> str:
        return str(self._path(key))


def _umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class RecentObjects:
    """Objects ingest has just read, kept (bounded, in memory) so scoring in the same worker need not
    download them again; a worker that never ingested them simply misses and downloads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._objects: OrderedDict[tuple[str, str, str], StoredObject] = OrderedDict()
        self._size = 0
        self._lock = threading.Lock()

    def put(self, source: Source, key: str, stored: StoredObject) -> None:
        """Remember an object, forgetting the oldest ones beyond the byte budget."""
        with self._lock:
            self._objects[(source.storage, source.bucket, key)] = stored
            self._size += len(stored.data)
            while self._size > self.max_bytes:
                self._size -= len(self._objects.popitem(last=False)[1].data)

    def take(self, source: Source, key: str, etag: str | None) -> StoredObject | None:
        """Hand over (and forget) the object if it is here with the same ETag."""
        with self._lock:
            stored = self._objects.pop((source.storage, source.bucket, key), None)
            if stored is not None:
                self._size -= len(stored.data)
        return stored if stored is not None and stored.etag == etag else None


recent_objects = RecentObjects(max_bytes=256 * 2**20)


def _connection_cause(error: HTTPError) -> str:
    """What urllib3 says went wrong with the connection, without its retry bookkeeping and object addresses."""
    reason = getattr(error, "reason", None) or error
    return re.sub(r"<[^>]*>: ", "", one_line(reason))


class _NoRetryWarnings(logging.Filter):
    """Drops urllib3's warning about each retry: the tasks log what outlasts them, and the CLI says it in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Retrying (")


_RETRY_WARNINGS = _NoRetryWarnings()


@lru_cache
def _minio_client(endpoint: str, access_key: str, secret_key: str, secure: bool, region: str | None) -> Minio:
    """One client per endpoint and credentials per process, pooling connections for every fetch thread.

    The SDK's own pool keeps 10 connections, fewer than the flows' batches in flight × fetch threads
    read at once (each extra one is opened, then dropped with a warning), and waits 5 minutes to connect
    and to read, retrying each 5 times: a stopped endpoint took over a minute to be reported. Here a larger
    pool, a one-minute stall limit for reads (big objects still stream), and a few seconds and one retry to
    connect, so an endpoint that is not there is known at once; the tasks retry outages beyond that.
    """
    http = urllib3.PoolManager(
        maxsize=S3_CONNECTIONS,
        timeout=urllib3.Timeout(connect=S3_CONNECT_SECONDS, read=S3_STALL_SECONDS),
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=urllib3.Retry(
            total=5, connect=S3_CONNECT_RETRIES, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
        ),
    )
    logging.getLogger("urllib3.connectionpool").addFilter(_RETRY_WARNINGS)
    return Minio(endpoint, access_key=access_key, secret_key=secret_key, secure=secure, region=region, http_client=http)


def minio_client(settings: Settings) -> Minio:
    """The S3 client configured by the settings."""
    return _minio_client(
        settings.s3_endpoint,
        settings.s3_access_key,
        settings.s3_secret_key.get_secret_value(),
        settings.s3_secure,
        settings.s3_region,
    )


def open_location(location: Location, settings: Settings) -> Source:
    """The objects at `location` (a folder need not exist yet: reads of it miss, writes create it)."""
    if location.storage == "s3":
        return S3Source(minio_client(settings), location.bucket, location.prefix, settings.s3_endpoint)
    return FolderSource(Path(location.bucket))


def open_source(uri: str, settings: Settings) -> Source:
    """Open `s3://bucket/prefix` or an existing folder to ingest from; SourceError says what is wrong with it."""
    location = parse_location(uri)
    if location.storage == "file" and not Path(location.bucket).is_dir():
        raise SourceError(f"{uri!r}: no such folder")
    return open_location(location, settings)


def check_source(uri: str, settings: Settings) -> Source:
    """Open a source to ingest from and list its first key: what is wrong with it (no folder or bucket, an
    endpoint that does not answer, refused credentials) is said at once, before any long work."""
    source = open_source(uri, settings)
    source.check()
    return source


def save_file(uri: str, name: str, data: bytes, content_type: str, settings: Settings) -> str:
    """Store `data` as `name` under `uri` (s3://bucket/prefix or a folder, made if need be); returns its URI."""
    location = parse_location(uri)
    return open_location(location, settings).write(location.key_for(name), data, content_type)


def load_file(uri: str, settings: Settings) -> bytes:
    """The bytes `save_file` stored at `uri` (the URI it returned); ObjectMissing when they are gone."""
    location = parse_location(uri)
    if location.storage == "s3":
        return open_location(Location("s3", location.bucket), settings).read(location.prefix).data
    path = Path(location.bucket)
    return FolderSource(path.parent).read(path.name).data


def created_objects(notification: dict) -> list[tuple[str, str, str | None]]:
    """(bucket, key, ETag or None) of each object-created record in an S3 / MinIO event notification."""
    created = []
    for record in notification.get("Records") or []:
        name = str(record.get("eventName", ""))
        if name.startswith(("s3:ObjectCreated:", "ObjectCreated:")):
            s3 = record["s3"]
            etag = str(s3["object"].get("eTag") or "").strip('"') or None
            created.append((s3["bucket"]["name"], unquote_plus(s3["object"]["key"]), etag))
    return created
