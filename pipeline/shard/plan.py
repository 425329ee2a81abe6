"""What a sharding run will produce, fixed before any encoding: the inputs in order, the classes, the
settings, and the fingerprint of all of it that decides resume.

`inputs` is what `inputs.jsonl` records of a run: a later run over a grown
source compares itself with it (`pipeline.shard.append`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.shard import manifest as mf
from pipeline.shard.layouts import Dataset, WorkItem
from pipeline.shard.manifest import SplitProgress
from pipeline.shard.options import ShardOptions


@dataclass
class Plan:
    layout: str
    classes: list[str]
    items: list[WorkItem]  # what this run encodes, in order
    settings: dict
    source: dict
    fingerprint: str
    inputs: list[dict] = field(default_factory=list)  # every input of the folder once it is done, in order
    base: dict[str, SplitProgress] | None = None  # an append's starting point: the folder's finished shards
    accepts: frozenset[str] = frozenset()  # fingerprints of the folder this run may start from (an append's)


def input_record(item: WorkItem) -> dict:
    """One line of inputs.jsonl."""
    return {"source": item.rel, "split": item.split, "class": item.class_name}


def select_part(items: list[WorkItem], part: tuple[int, int] | None) -> list[WorkItem]:
    """Every n-th item from i: disjoint, covering, and balanced across classes and splits."""
    if part is None:
        return items
    i, n = part
    return items[i::n]


def resolve_classes(ds: Dataset, classes: str | os.PathLike | list[str] | None) -> list[str]:
    if classes is None:
        return ds.classes
    return list(classes) if isinstance(classes, list) else mf.read_class_file(Path(classes))


def make_plan(ds: Dataset, opts: ShardOptions) -> Plan:
    class_list, part = resolve_classes(ds, opts.classes), opts.part
    items = select_part(ds.items, part)
    settings = {**opts.encode.to_json(), **opts.packing()}
    part_text = None if part is None else f"{part[0]}/{part[1]}"
    source = {"layout": ds.layout, "root": str(ds.root), "part": part_text, "notes": ds.notes}
    fp = mf.fingerprint(
        {
            "format": mf.FORMAT_VERSION,
            "settings": settings,
            "classes": class_list,
            "layout": ds.layout,
            "part": part_text,
            "items": [(i.key, i.split, i.class_name, i.rel) for i in items],
        }
    )
    return Plan(ds.layout, class_list, items, settings, source, fp, [input_record(i) for i in items])
