"""What the export needs to know about a shard folder: which splits it holds, and a fingerprint of its data.

Shard folders written by `pipeline.shard` name their files
`<split>-NNNNNN.tar` and describe them in `manifest.json` (every shard's
size and sha256) and `classes.json` (label order). The Top-1 gate reads a
split and binds its verdict to the data with `fingerprint`:

  - with a manifest: sha256 of the manifest (its `run` section, which holds
    timings, left out), the class list, and the name and size of every tar
    and index file actually present for the split, so a shard replaced or
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
import re
from dataclasses import dataclass
from pathlib import Path

from export.common import ExportError, file_sha256

SHARD_NAME = re.compile(r"^(?P<split>.+)-(?P<n>\d+)\.tar$")
ALL_SPLITS = "all"  # --split all: every *.tar of the folder


@dataclass(frozen=True)
class ShardFingerprint:
    sha256: str
    kind: str  # "manifest" or "index files"
    files: int  # tars covered


def splits_present(folder: str | os.PathLike) -> list[str]:
    """Split names of the `<split>-NNNNNN.tar` files in `folder` (sorted; "(unsplit)" for other tars)."""
    names = set()
    for tar in Path(folder).glob("*.tar"):
        m = SHARD_NAME.match(tar.name)
        names.add(m.group("split") if m else "(unsplit)")
    return sorted(names)


def resolve_split(shards: str | os.PathLike, split: str | None) -> str | None:
    """The loader's `split` for a shard folder: None for every tar ("all"), else a split that must exist.

    Raises ExportError naming the splits present when `split` has no shards,
    rather than silently validating on whatever else the folder holds.
    """
    if split in (None, "", ALL_SPLITS):
        return None
    folder = Path(shards)
    if not folder.is_dir():
        raise ExportError(f"validation shards {folder} is not a folder: build them with `python -m pipeline.shard`")
    if any(folder.glob(f"{split}-*.tar")):
        return split
    present = splits_present(folder)
    if not present:
        raise ExportError(f"no shards (*.tar) in {folder}: build them with `python -m pipeline.shard SRC --out {folder}`")
    listed = ", ".join(present)
    raise ExportError(
        f"{folder} has no {split!r} split (no {split}-*.tar); splits present: {listed}. "
        f"Pass --split with one of them (or --split {ALL_SPLITS} for every shard)"
    )


def split_files(folder: Path, split: str | None) -> list[Path]:
    pattern = f"{split}-*.tar" if split else "*.tar"
    return sorted(folder.glob(pattern))


def fingerprint(shards: str | os.PathLike, split: str | None) -> ShardFingerprint:
    """The data binding of a validation run on `split` of `shards` (see the module docstring)."""
    folder = Path(shards)
    if not folder.is_dir():
        raise ExportError(f"cannot fingerprint {folder}: not a local shard folder")
    tars = split_files(folder, split)
    if not tars:
        raise ExportError(f"no shards for split {split!r} in {folder}")
    present = [_file_entry(t) for t in tars] + [_file_entry(t.with_suffix(".idx")) for t in tars]
    payload: dict = {"split": split, "classes": _read_json(folder / "classes.json"), "files": present}
    manifest = _read_json(folder / "manifest.json")
    if isinstance(manifest, dict):
        payload["manifest"] = {k: v for k, v in manifest.items() if k != "run"}
        kind = "manifest"
    else:
        payload["indexes"] = [_sha256_or_none(t.with_suffix(".idx")) for t in tars]
        kind = "index files"
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return ShardFingerprint(sha256=hashlib.sha256(blob).hexdigest(), kind=kind, files=len(tars))


def read_classes(shards: str | os.PathLike) -> list[str] | None:
    """The folder's classes.json (names in label order), or None when it has none."""
    data = _read_json(Path(shards) / "classes.json")
    if isinstance(data, list) and all(isinstance(c, str) for c in data):
        return data
    return None


def _file_entry(path: Path) -> list:
    return [path.name, path.stat().st_size if path.exists() else None]


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _sha256_or_none(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None
