"""What the export needs from a shard folder: which splits it holds, its test views, a fingerprint of its data.

`view_batches` is the one reader of test-protocol views for the Top-1 gate
and the FP16 calibration, with the loader's errors as ExportError.

A shard folder (a local path or an object-storage URL, through
`pipeline`'s location functions) written by `pipeline.shard` names its files
`<split>-NNNNNN.tar` and describes them in `manifest.json` (every shard's
size and sha256) and `classes.json` (label order). The Top-1 gate reads a
split and binds its verdict to the data with `shard_fingerprint`:

  - with a manifest: sha256 of the manifest (its `run` section, which holds
    timings, left out), the class list, and the name and size of every tar
    and index file actually there for the split, so a shard replaced or
    truncated behind the manifest's back changes it too;
  - without one: sha256 of the class list and of each tar's name, size and
    DALI index (the index lists every member's offset and size).

Cheap by design (no tar is read): the manifest already holds the shards'
sha256, and re-hashing a validation set of many gigabytes would make
checking a marker slower than the gate itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from export.errors import ExportError
from pipeline import (
    ClipSpec,
    ShardError,
    find_shards,
    index_path,
    resolve_split,
    storage,
)


@dataclass(frozen=True)
class ShardFingerprint:
    sha256: str
    kind: str  # "manifest" or "index files"


def validation_split(shards: str | os.PathLike, split: str | None) -> str | None:
    """`pipeline.resolve_split` for the gate's shards; its errors become ExportError (exit code 3)."""
    try:
        return resolve_split(str(shards) if storage.is_remote(shards) else os.fspath(shards), split)
    except (ShardError, OSError, ImportError) as e:
        raise ExportError(f"validation shards: {e}") from None


def view_batches(
    shards: str | os.PathLike,
    clip: ClipSpec,
    *,
    batch_size: int,
    split: str | None,
    what: str,
    on_open: Callable[[int], None] | None = None,
) -> Iterator[tuple]:
    """(clips (N, V, 3, T, H, W), labels) batches of `pipeline.ClipLoader` in test mode.

    Bad shards (when the loader opens them) and undecodable videos (while
    it iterates) become ExportError naming `what` ("validation shards",
    "calibration shards") and the folder. `on_open(number of classes)` runs
    once the shards are open, before any video is decoded. The loader's files
    are closed when the batches run out, and when the caller stops early
    and closes the generator (`contextlib.closing`).
    """
    from pipeline import ClipLoader

    try:
        with ClipLoader(shards, clip, mode="test", batch_size=batch_size, split=split) as loader:
            if on_open is not None:
                on_open(loader.num_classes)
            yield from loader
    except (ShardError, FileNotFoundError) as e:  # DataError, raised while decoding, is a ShardError
        raise ExportError(f"cannot read {what} {shards}: {e}") from None


def shard_fingerprint(shards: str | os.PathLike, split: str | None) -> ShardFingerprint:
    """The data binding of a validation run on `split` of `shards` (see the module docstring)."""
    try:
        tars = find_shards(str(shards) if storage.is_remote(shards) else os.fspath(shards), split)
        files = [[storage.name_of(f), storage.size_of(f)] for t in tars for f in (t, index_path(t))]
    except (ShardError, OSError) as e:
        raise ExportError(f"cannot fingerprint the shards {shards}: {e}") from None
    payload: dict = {"split": split, "classes": _read_json(storage.join(shards, "classes.json")), "files": files}
    manifest = _read_json(storage.join(shards, "manifest.json"))
    if isinstance(manifest, dict):
        payload["manifest"] = {k: v for k, v in manifest.items() if k != "run"}
        kind = "manifest"
    else:
        payload["indexes"] = [hashlib.sha256(storage.read_bytes(index_path(t))).hexdigest() for t in tars]
        kind = "index files"
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return ShardFingerprint(sha256=hashlib.sha256(blob).hexdigest(), kind=kind)


def _read_json(location):
    try:
        return json.loads(storage.read_bytes(location))
    except (OSError, ValueError):
        return None
