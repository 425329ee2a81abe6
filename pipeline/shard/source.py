"""A source dataset on object storage (`s3://`, `gs://`, `az://`, ... through fsspec).

The layouts (`pipeline.shard.layouts`) scan a local tree. For a URL source the
driver lists the objects once and builds a *skeleton* of the tree in a local
temp folder: every folder; every small metadata file (annotation CSVs and
JSONs, label lists; downloaded, they are what the layouts read); every other
object as a sparse file of its size (nothing fetched). The layouts scan the
skeleton as they scan a disk, so every layout works and the work list (keys,
splits, classes, order) is the one a local copy of the same tree gives.
Each work item then points at its object's URL, and whoever encodes it
(a local thread or a cluster worker) fetches that object itself into a temp
folder of its own machine (`fetched`): no video passes through the driver.
"""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.io import storage
from pipeline.errors import ShardingError
from pipeline.shard.ffmpeg import FFmpegError
from pipeline.shard.layouts import Dataset, LayoutError, WorkItem, scan

METADATA_EXTS = frozenset({".csv", ".json", ".txt", ".lst", ".tsv"})
METADATA_MAX_BYTES = 256 * 2**20


class InputUnavailable(ShardingError):
    """An input object could not be fetched for a reason other than its absence (network, credentials):
    not the input's fault, so it is retried rather than rejected."""


def scan_url(url: str, layout: str = "auto", **options) -> Dataset:
    """`pipeline.shard.layouts.scan` of the tree under `url`; items point at their objects' URLs."""
    with tempfile.TemporaryDirectory(prefix="tpn-source-") as folder:
        root = build_skeleton(url, Path(folder) / "src")
        ds = scan(root, layout, **options)
        base = str(root.resolve())
        ds.items = [dataclasses.replace(item, path=str(storage.join(url, item.rel))) for item in ds.items]
        ds.notes = [note.replace(base, url.rstrip("/")) for note in ds.notes]
        ds.root = url.rstrip("/")
        return ds


def build_skeleton(url: str, into: Path) -> Path:
    """The tree under `url` as local folders, metadata files and sparse placeholders (module docstring)."""
    fs, root = storage.filesystem(url)
    root = root.rstrip("/")
    fs.invalidate_cache()
    try:
        listing = fs.find(root, withdirs=True, detail=True)
    except FileNotFoundError:
        listing = {}
    except Exception as err:  # network and credential errors come in many types
        raise LayoutError(f"could not list {url} ({type(err).__name__}: {err}); {storage.REMOTE_HINT}") from None
    if not listing:
        raise LayoutError(f"{url}: no objects under it; pass the dataset's folder URL ({storage.REMOTE_HINT})")
    into.mkdir(parents=True)
    for path, info in sorted(listing.items()):
        rel = path[len(root) :].strip("/")
        if not rel or not path.startswith(root + "/"):
            continue
        local = into / rel
        if info.get("type") == "directory":
            local.mkdir(parents=True, exist_ok=True)
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        size = int(info.get("size") or 0)
        if local.suffix.lower() in METADATA_EXTS and size <= METADATA_MAX_BYTES:
            storage.download(f"{url.split('://', 1)[0]}://{path}", local)
        else:
            with open(local, "wb") as f:
                f.truncate(size)  # sparse: the size is right (empty inputs are still found), no bytes stored
    return into


@contextlib.contextmanager
def fetched(item: WorkItem) -> Iterator[WorkItem]:
    """`item` with its input on this machine: as it is when local, else fetched into a temp folder
    (a video object, or a frame folder's objects) that is removed afterwards."""
    if not storage.is_remote(item.path):
        yield item
        return
    with tempfile.TemporaryDirectory(prefix="tpn-input-") as folder:
        local = Path(folder) / Path(item.rel).name
        try:
            if item.kind == "frames":
                fs, path = storage.filesystem(item.path)
                local.mkdir()
                names = fs.ls(path.rstrip("/"), detail=False)
                if not names:
                    raise FileNotFoundError(item.path)
                for name in names:
                    storage.download(f"{item.path.split('://', 1)[0]}://{name}", local / Path(name).name)
            elif not storage.download(item.path, local):
                raise FileNotFoundError(item.path)
        except FileNotFoundError:
            raise FFmpegError("missing_file", f"{item.rel} is no longer at {item.path}") from None
        except OSError as err:
            raise InputUnavailable(f"could not fetch {item.path}: {err}") from None
        yield dataclasses.replace(item, path=str(local))
