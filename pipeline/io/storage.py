"""Where shards live: a local (or mounted) folder, or object storage / HTTP through fsspec.

A shard location is a path or a URL (`s3://`, `gs://`, `az://`, `http(s)://`,
any fsspec protocol). Readers fetch byte ranges: local files with `os.pread`
through a bounded pool of descriptors (`pipeline.io.filepool.FilePool`), remote
objects with fsspec's `cat_ranges`, which sends a batch's ranges as concurrent
requests (asynchronous filesystems: s3fs, gcsfs, adlfs, HTTP). Failed ranges
are retried a bounded number of times; the error names the object, the range
and what to check. Credentials and endpoints come from the standard
environment (AWS_*, GOOGLE_*, AZURE_*), fsspec's `FSSPEC_<PROTOCOL>_<OPTION>`
variables or its config files; they are never written to logs or reports.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

RETRIES = 3
REMOTE_HINT = (
    "check the URL, that the object exists, the credentials and endpoint in the environment "
    "(e.g. AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL) and the network"
)


def is_remote(location: str | Path) -> bool:
    """A URL other than file:// (paths and file:// URLs are local)."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def join(location: str | Path, name: str) -> str | Path:
    if is_remote(location):
        return f"{str(location).rstrip('/')}/{name}"
    return Path(location) / name


def parent(location: str | Path) -> str | Path:
    if is_remote(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return Path(location).parent


def name_of(location: str | Path) -> str:
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL; a clear error when its package is missing."""
    try:
        import fsspec
    except ImportError:  # pragma: no cover - fsspec comes with the package
        raise ImportError("reading shards from URLs needs fsspec: pip install fsspec") from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:
        proto = url.split("://", 1)[0]
        package = {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}.get(proto, "fsspec")
        raise ImportError(
            f"reading {proto}:// shards needs {package}: pip install {package} (or pip install -e '.[cloud]'); {err}"
        ) from None


def read_bytes(location: str | Path) -> bytes:
    """A whole (small) file: manifest, classes, index."""
    if not is_remote(location):
        return Path(location).read_bytes()
    fs, path = filesystem(str(location))
    return _with_retries(lambda: fs.cat_file(path), str(location), "the whole object")


def exists(location: str | Path) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    fs, path = filesystem(str(location))
    fs.invalidate_cache(path)  # listings are cached per filesystem object; ask the store itself
    return bool(fs.exists(path))


def size_of(location: str | Path) -> int:
    if not is_remote(location):
        return Path(location).stat().st_size
    fs, path = filesystem(str(location))
    fs.invalidate_cache(path)
    return int(_with_retries(lambda: fs.info(path), str(location), "its size")["size"])


def download(url: str, path: Path) -> bool:
    """Copy a remote object to a local file (False if it does not exist)."""
    fs, remote = filesystem(url)
    try:
        _with_retries(lambda: fs.get_file(remote, str(path)), url, "the whole object")
    except FileNotFoundError:
        return False
    return True


def upload(path: Path, url: str) -> None:
    """Put a local file at `url` with bounded retries. Object stores show the object only once the
    upload completes, so an interrupted upload never leaves a partial object under `url`."""
    fs, remote = filesystem(url)
    _with_retries(lambda: fs.put_file(str(path), remote), url, "the upload")


def write_bytes(url: str, data: bytes) -> None:
    """A small object (a lock, a note) at `url`, with bounded retries."""
    fs, remote = filesystem(url)
    _with_retries(lambda: fs.pipe_file(remote, data), url, "the write")


def remove(url: str) -> None:
    """Delete the object at `url` (nothing when it is absent)."""
    fs, remote = filesystem(url)
    try:
        _with_retries(lambda: fs.rm_file(remote), url, "the delete")
    except FileNotFoundError:
        pass


def remove_many(urls: list[str]) -> None:
    """Delete objects of one store in bulk requests (absent ones are no error)."""
    if not urls:
        return
    fs, _ = filesystem(urls[0])
    paths = [filesystem(u)[1] for u in urls]
    try:
        _with_retries(lambda: fs.rm(paths), urls[0], "the delete")
    except FileNotFoundError:
        pass


def remove_tree(url: str) -> None:
    """Delete every object under the prefix `url` (nothing when there is none)."""
    fs, path = filesystem(url)
    try:
        _with_retries(lambda: fs.rm(path.rstrip("/"), recursive=True), url, "the delete")
    except FileNotFoundError:
        pass


def list_names(folder: str) -> list[str]:
    """Names of the objects directly in a remote folder."""
    fs, path = filesystem(folder)
    fs.invalidate_cache(path.rstrip("/"))
    return sorted(name_of(p) for p in fs.ls(path.rstrip("/"), detail=False))


class RemoteReader:
    """Byte ranges of remote shard objects; one call fetches a whole batch concurrently."""

    def __init__(self, urls: Sequence[str]):
        self.urls = [str(u) for u in urls]
        self.fs, _ = filesystem(self.urls[0])
        self.paths = [filesystem(u)[1] for u in self.urls]

    def read(self, number: int, offset: int, size: int) -> bytes:
        return self.read_many([(number, offset, size)])[0]

    def read_many(self, requests: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """[(file number, offset, size)] -> bytes, fetched as concurrent range requests with retries."""
        if not requests:
            return []
        out: list[bytes | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        last: BaseException | None = None
        for attempt in range(RETRIES):
            paths = [self.paths[requests[i][0]] for i in todo]
            starts = [requests[i][1] for i in todo]
            ends = [requests[i][1] + requests[i][2] for i in todo]
            try:
                got = self.fs.cat_ranges(paths, starts, ends, on_error="return")
            except Exception as err:  # the whole call failed (endpoint down, ...)
                got, last = [err] * len(todo), err
            failed = []
            for i, data in zip(todo, got):
                if isinstance(data, BaseException) or len(data) != requests[i][2]:
                    if not failed:  # the error reported is the first failed request's
                        last = (
                            data
                            if isinstance(data, BaseException)
                            else EOFError(f"got {len(data)} of {requests[i][2]} bytes (truncated object?)")
                        )
                    failed.append(i)
                else:
                    out[i] = data
            if not failed:
                return out  # type: ignore[return-value]
            todo = failed
            if isinstance(last, (FileNotFoundError, PermissionError)):
                break  # retrying cannot help
            time.sleep(0.2 * 2**attempt)
        number, offset, size = requests[todo[0]]
        raise remote_error(self.urls[number], f"bytes {offset}-{offset + size - 1}", last)

    def close(self) -> None:
        pass


BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def missing_bucket(url: str) -> str | None:
    """The URL of `url`'s bucket (container) when the store says it does not exist; None when it does, or
    when the store has no buckets."""
    protocol = url.split("://", 1)[0]
    if protocol not in BUCKET_PROTOCOLS:
        return None
    try:
        fs, path = filesystem(url)
        bucket = path.split("/", 1)[0]
        return None if fs.exists(bucket) else f"{protocol}://{bucket}"
    except Exception:  # the question itself failed: say nothing more than the first error
        return None


def remote_error(url: str, what: str, err: BaseException | None) -> OSError:
    kind = type(err).__name__ if err is not None else "error"
    message = f"could not read {what} of {url} after {RETRIES} tries ({kind}: {err}); {REMOTE_HINT}"
    if isinstance(err, FileNotFoundError):
        bucket = missing_bucket(url)
        if bucket is not None:
            return FileNotFoundError(
                f"the bucket {bucket} does not exist ({what} of {url}): create it, or check the URL and the "
                "endpoint (e.g. AWS_ENDPOINT_URL or FSSPEC_S3_ENDPOINT_URL)"
            )
        return FileNotFoundError(f"{url} does not exist ({what}); {REMOTE_HINT}")
    if isinstance(err, PermissionError):
        return PermissionError(f"access to {url} denied ({what}); {REMOTE_HINT}")
    return OSError(message)


def _with_retries(fn, url: str, what: str):
    last: BaseException | None = None
    for attempt in range(RETRIES):
        try:
            return fn()
        except (FileNotFoundError, PermissionError) as err:
            raise remote_error(url, what, err) from None
        except Exception as err:  # network errors come in many types
            last = err
            time.sleep(0.2 * 2**attempt)
    raise remote_error(url, what, last)
