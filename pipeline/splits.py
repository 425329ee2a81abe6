"""The split vocabulary every tool shares: train, val and test, and the names datasets give them.

`pipeline.shard` reads split folders and lists by these names, `pipeline.resolve_split`
(and so every tool's `--split`) accepts them: `validation` means `val` everywhere.
"""

from __future__ import annotations

SPLITS = ("train", "val", "test")  # shard file prefixes, in this order
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "validate": "val",
    "test": "test",
    "testing": "test",
}


def normalize_split(name: str) -> str | None:
    """The split a folder, list or flag name means, or None when it is not a split name."""
    return SPLIT_ALIASES.get(name.strip().lower())


def split_order(split: str) -> tuple[int, str]:
    """Sort key: train, val, test, then any other name alphabetically."""
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)
