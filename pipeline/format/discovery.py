"""Which tars a shard folder (or URL, or list) holds: splits, `<split>-*.tar`, and their checksums.

Shard contract (written by `pipeline.shard`): `DIR/<split>-NNNNNN.tar` with
`DIR/<split>-NNNNNN.idx` beside it, `DIR/classes.json` and `DIR/manifest.json`.
A folder's manifest is read once per lookup (`locate_shards`): a remote
folder's shard list comes from it, and the sample index keys its cache on
the checksums it records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ShardReadError
from pipeline.io import storage
from pipeline.splits import normalize_split

ALL_SPLITS = "all"  # a split argument meaning every *.tar of the folder
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Shards:
    """The tars a lookup found (Paths, or URLs), and the sha256 their folders' manifests record for them."""

    tars: list
    checksums: dict[str, str] = field(default_factory=dict)  # str(tar) -> sha256


def read_folder_manifest(folder) -> dict | None:
    """A shard folder's manifest.json (local or remote), or None when it has none or it does not parse."""
    try:
        manifest = json.loads(storage.read_bytes(storage.join(folder, MANIFEST)))
    except (FileNotFoundError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def manifest_checksums(folder, manifest: dict | None) -> dict[str, str]:
    """str(tar) -> sha256 for the shards `manifest` lists in `folder` (pure)."""
    shards = (manifest or {}).get("shards", [])
    try:
        return {str(storage.join(folder, s["file"])): s["sha256"] for s in shards}
    except (KeyError, TypeError):
        return {}


def splits_in(folder: str | Path) -> list[str]:
    """The splits a shard folder holds (`<split>-NNNNNN.tar` names)."""
    if storage.is_remote(folder):
        names = [storage.name_of(u) for u in _remote_tars(str(folder), None, read_folder_manifest(folder))]
    else:
        names = [p.name for p in Path(folder).glob("*-*.tar")]
    return sorted({n.split("-")[0] for n in names})


def _remote_tars(folder: str, split: str | None, manifest: dict | None) -> list[str]:
    """Shard URLs of a remote folder: those its manifest lists when it has one, else by listing."""
    if manifest is not None:
        names = [s["file"] for s in manifest.get("shards", []) if split is None or s.get("split") == split]
        return sorted(str(storage.join(folder, n)) for n in names)
    fs, path = storage.filesystem(folder)
    fs.invalidate_cache(path.rstrip("/"))  # listings are cached per filesystem object
    pattern = f"{split}-*.tar" if split else "*.tar"
    protocol = folder.split("://", 1)[0]
    return sorted(f"{protocol}://{p}" for p in fs.glob(f"{path.rstrip('/')}/{pattern}"))


def resolve_split(shards: str | Path, split: str | None, flag: str = "--split") -> str | None:
    """The split to read from a shard folder or URL: None for every tar (`split` None, "" or "all"),
    else `split`, which must be there.

    A split the folder lacks is a `ShardReadError` listing the splits it has,
    never a silent switch to other shards (testing on the training split by
    mistake looks like a great model); it tells the user to pass `flag`, the
    command-line flag that gave `split` (tpn.train has two).
    """
    if split in (None, "", ALL_SPLITS):
        return None
    split = normalize_split(split) or split  # one vocabulary: validation means val, as pipeline.shard reads it
    if not storage.is_remote(shards) and not Path(shards).is_dir():
        raise ShardReadError(f"{shards} is not a shard folder: build one with `python -m pipeline.shard SRC --out DIR`")
    present = splits_in(shards)
    if split in present:
        return split
    if not present:
        raise ShardReadError(f"no <split>-NNNNNN.tar shards in {shards}: build them with `python -m pipeline.shard`")
    raise ShardReadError(
        f"{shards} has no {split!r} split (no {split}-*.tar); splits present: {', '.join(present)}. "
        f"Pass {flag} with one of them (or {flag} {ALL_SPLITS} for every shard)"
    )


def find_shards(shards: str | Path | Sequence[str | Path], split: str | None = None) -> list:
    """A directory (all `*.tar`, or `<split>-*.tar`, sorted) or an explicit list -> tar paths (or URLs)."""
    return locate_shards(shards, split).tars


def locate_shards(shards: str | Path | Sequence[str | Path], split: str | None = None) -> Shards:
    """`find_shards`, with the checksums the shards' manifests record (each manifest read once). `split` is
    read in the one split vocabulary (`validation` is `val`; "all" or "" is every tar)."""
    split = None if split in (None, "", ALL_SPLITS) else normalize_split(split) or split
    if isinstance(shards, str) and storage.is_remote(shards):
        manifest = read_folder_manifest(shards)
        tars = _remote_tars(shards, split, manifest)
        if not tars:
            present = splits_in(shards)
            there = f"the splits there are {', '.join(present)}" if present else "it holds no shards"
            raise ShardReadError(f"no shards{f' of split {split!r}' if split else ''} at {shards} ({there})")
        return Shards(tars, manifest_checksums(shards, manifest))
    tars = _local_folder_tars(Path(shards), split) if isinstance(shards, (str, Path)) else _listed_tars(shards, split)
    checksums: dict[str, str] = {}
    for folder in sorted({str(storage.parent(t)) for t in tars}):
        checksums.update(manifest_checksums(folder, read_folder_manifest(folder)))
    return Shards(tars, checksums)


def _local_folder_tars(folder: Path, split: str | None) -> list[Path]:
    if not folder.exists():
        raise FileNotFoundError(
            f"shard directory {folder} does not exist: build it with `python -m pipeline.shard SRC --out {folder}`"
        )
    if not folder.is_dir():
        raise ShardReadError(f"{folder} is not a directory: pass a shard directory or a list of .tar paths")
    pattern = f"{split}-*.tar" if split else "*.tar"
    tars = sorted(folder.glob(pattern))
    if not tars:
        present = splits_in(folder)
        there = f"the splits there are {', '.join(present)}" if present else "it holds no shards"
        raise ShardReadError(
            f"no shards matching {pattern!r} in {folder} ({there}): pass one of those splits, or build "
            f"them with `python -m pipeline.shard SRC --out {folder}`"
        )
    return tars


def _listed_tars(shards: Sequence[str | Path], split: str | None) -> list:
    tars = [str(t) if storage.is_remote(t) else Path(t) for t in shards]
    if not tars:
        raise ShardReadError("empty shard list: pass a shard directory or at least one .tar path")
    if split is not None:
        raise ShardReadError(
            "split= selects shards inside a directory; with an explicit list, pass only the tars you want"
        )
    if len({storage.is_remote(t) for t in tars}) > 1:
        raise ShardReadError("the shard list mixes local paths and URLs: pass shards of one place")
    for tar in tars:
        if isinstance(tar, Path) and not tar.exists():
            raise FileNotFoundError(f"shard {tar} does not exist")
        if not str(tar).endswith(".tar") or isinstance(tar, Path) and not tar.is_file():
            raise ShardReadError(
                f"{tar} is not a shard (a .tar written by `python -m pipeline.shard`): pass a shard "
                "folder, or its .tar files"
            )
    return tars
