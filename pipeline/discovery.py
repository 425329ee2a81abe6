"""Which tars a shard folder (or URL, or list) holds: splits, `<split>-*.tar` and their `.idx` paths.

Shard contract (written by `pipeline.shard`): `DIR/<split>-NNNNNN.tar` with
`DIR/<split>-NNNNNN.idx` beside it, `DIR/classes.json` and `DIR/manifest.json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pipeline import storage
from pipeline.errors import ShardReadError
from pipeline.splits import normalize_split

ALL_SPLITS = "all"  # a split argument meaning every *.tar of the folder


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
    present = storage.splits_in(shards)
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
    if isinstance(shards, str) and storage.is_remote(shards):
        tars = storage.list_remote_shards(shards, split)
        if not tars:
            present = storage.splits_in(shards)
            there = f"the splits there are {', '.join(present)}" if present else "it holds no shards"
            raise ShardReadError(f"no shards{f' of split {split!r}' if split else ''} at {shards} ({there})")
        return tars
    if isinstance(shards, (str, Path)):
        folder = Path(shards)
        if not folder.exists():
            raise FileNotFoundError(
                f"shard directory {folder} does not exist: build it with `python -m pipeline.shard SRC --out {folder}`"
            )
        if not folder.is_dir():
            raise ShardReadError(f"{folder} is not a directory: pass a shard directory or a list of .tar paths")
        pattern = f"{split}-*.tar" if split else "*.tar"
        tars = sorted(folder.glob(pattern))
        if not tars:
            present = storage.splits_in(folder)
            there = f"the splits there are {', '.join(present)}" if present else "it holds no shards"
            raise ShardReadError(
                f"no shards matching {pattern!r} in {folder} ({there}): pass one of those splits, or build "
                f"them with `python -m pipeline.shard SRC --out {folder}`"
            )
        return tars
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


def index_path(tar):
    if isinstance(tar, Path):
        return tar.with_suffix(".idx")
    return str(tar)[: -len(".tar")] + ".idx" if str(tar).endswith(".tar") else f"{tar}.idx"
