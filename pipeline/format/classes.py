"""`classes.json`: the class names of a shard folder, in label order."""

from __future__ import annotations

import json

from pipeline.io import storage
from pipeline.errors import ShardReadError


def parse_classes(data: bytes | str, where: str) -> list[str]:
    """A classes.json body (JSON list of distinct names in label order), validated; `where` names it in errors."""
    try:
        classes = json.loads(data)
    except ValueError as err:
        raise ShardReadError(
            f"{where} is not valid JSON ({err}); re-create it with `python -m pipeline.shard`"
        ) from None
    if (
        not isinstance(classes, list)
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ShardReadError(f"{where} must be a JSON list of distinct class names in label order")
    return classes


def classes_of_shards(tars: list) -> list[str]:
    """Class names from `classes.json` beside the shards (one list for all of them)."""
    found: dict[str, list[str]] = {}
    for folder in sorted({str(storage.parent(t)) for t in tars}):
        path = storage.join(folder, "classes.json")
        try:
            found[folder] = parse_classes(storage.read_bytes(path), str(path))
        except FileNotFoundError:
            raise FileNotFoundError(
                f"missing {path}: the shard directory needs the class list written by `python -m pipeline.shard`"
            ) from None
    lists = list(found.values())
    if any(c != lists[0] for c in lists[1:]):
        raise ShardReadError(f"the shard directories {sorted(map(str, found))} have different classes.json")
    return lists[0]
