"""A shard folder that grows: what changed since it was made, and `--append`.

A finished folder lists its inputs in order (`inputs.jsonl`). A later run
over the source compares itself with that list:

- without `--append`, a folder of other inputs or settings is refused, and
  the refusal says what changed: how many inputs were added, removed or
  changed (a new split or class for the same file), with a few names, and
  which settings differ;
- with `--append`, the inputs added since are encoded into new shards
  numbered after the existing ones; every existing shard and `.idx` stays
  byte for byte as it is, and the manifest, `inputs.jsonl`, rejections and
  warnings are rewritten to cover both. Removed or changed inputs, other
  settings, and a class list whose existing labels would move are refused
  with the reason (a new class may join at the end of the list; pass
  `--classes` with the old list and it to choose its place).

An interrupted append resumes like any run: its resume state chains the
folder's fingerprint with the added inputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

from pipeline.errors import ShardingError
from pipeline.io import storage
from pipeline.shard import manifest as mf
from pipeline.shard.manifest import ShardRecord, SplitProgress
from pipeline.shard.plan import Plan

SHOWN = 3  # names shown per kind of change


@dataclass
class InputChange:
    """How a source's inputs differ from those a folder was made of."""

    added: list[dict] = field(default_factory=list)
    removed: list[dict] = field(default_factory=list)
    changed: list[tuple[dict, dict]] = field(default_factory=list)  # (was, is) of one source

    @property
    def any(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def describe(self) -> str:
        parts = []
        for what, records in (("added", self.added), ("removed", self.removed)):
            if records:
                parts.append(
                    f"{len(records)} input(s) {what} ({mf.describe_names([r['source'] for r in records], SHOWN)})"
                )
        if self.changed:
            names = [f"{a['source']}: {a['split']}/{a['class']} -> {b['split']}/{b['class']}" for a, b in self.changed]
            parts.append(f"{len(self.changed)} input(s) changed split or class ({mf.describe_names(names, SHOWN)})")
        return "; ".join(parts) or "the same inputs"


def compare(old: list[dict], new: list[dict]) -> InputChange:
    """The change from `old` inputs to `new` ones, by source path, in the new (or old) order (pure)."""
    was = {r["source"]: r for r in old}
    now = {r["source"]: r for r in new}
    return InputChange(
        added=[r for r in new if r["source"] not in was],
        removed=[r for r in old if r["source"] not in now],
        changed=[(was[r["source"]], r) for r in new if r["source"] in was and was[r["source"]] != r],
    )


def settings_change(old: dict, new: dict) -> list[str]:
    """'codec: vp9 -> jpeg' for every setting that differs (pure)."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys]


@dataclass
class Folder:
    """What a finished folder says of itself: its manifest, inputs, classes, rejections and warnings."""

    location: str
    manifest: dict
    inputs: list[dict] | None  # None: made before inputs.jsonl was written
    classes: list[str]
    rejected: list[dict]
    warnings: list[dict]


def read_folder(location) -> Folder | None:
    """The finished folder at `location` (a folder or URL) when this toolkit made one there, else None."""
    try:
        manifest = mf.own_manifest(storage.read_bytes(storage.join(location, mf.MANIFEST)))
    except FileNotFoundError:
        return None
    if manifest is None:
        return None

    def jsonl(name: str) -> list[dict] | None:
        try:
            return mf.read_jsonl(storage.read_bytes(storage.join(location, name)))
        except FileNotFoundError:
            return None

    classes = json.loads(storage.read_bytes(storage.join(location, mf.CLASSES)))
    return Folder(
        str(location), manifest, jsonl(mf.INPUTS), classes, jsonl(mf.REJECTED) or [], jsonl(mf.WARNINGS) or []
    )


def change_message(folder: Folder, plan: Plan) -> str:
    """Why a run of `plan` may not write over `folder`, and what to do."""
    what = []
    if folder.inputs is None:
        what.append("its inputs are not listed (it was made before inputs.jsonl was written)")
        change = InputChange()
    else:
        change = compare(folder.inputs, plan.inputs)
        if change.any:
            what.append(change.describe())
    settings = settings_change(folder.manifest.get("settings", {}), plan.settings)
    if settings:
        what.append("settings differ (" + ", ".join(settings) + ")")
    if folder.classes != plan.classes:
        what.append("the class list differs")
    grows = change.added and not (change.removed or change.changed or settings)
    todo = "pass --append to shard only the added inputs into new shards, " if grows else ""
    return (
        f"{folder.location} already holds shards made from other inputs or settings: "
        + ("; ".join(what) or "other run options")
        + f". Use a new --out, {todo}or pass --overwrite to replace them"
    )


def append_plan(folder: Folder, plan: Plan) -> Plan:
    """The plan that adds `plan`'s new inputs to `folder`: its items are only the added ones; it starts from
    the folder's shards, rejections and warnings. Refuses what an append cannot keep true."""
    where = folder.location
    if folder.inputs is None:
        raise ShardingError(
            f"--append: {where} was made before its inputs were listed (no {mf.INPUTS}); re-shard it once "
            "(--overwrite), then later runs can append"
        )
    if folder.manifest.get("source", {}).get("part"):
        raise ShardingError(f"--append: {where} holds one --part of a dataset; append to the merged folder")
    change = compare(folder.inputs, plan.inputs)
    if change.removed or change.changed:
        lost = InputChange(removed=change.removed, changed=change.changed).describe()
        raise ShardingError(
            f"--append only adds inputs, and {where} has some that are gone or changed since: {lost}. Shard "
            "to a new --out, or --overwrite it"
        )
    settings = settings_change(folder.manifest.get("settings", {}), plan.settings)
    if settings:
        raise ShardingError(f"--append: {where} was made with other settings ({', '.join(settings)}); use those")
    if plan.classes[: len(folder.classes)] != folder.classes:
        new = [c for c in plan.classes if c not in folder.classes]
        raise ShardingError(
            f"--append: the class list would change the labels of {where}'s shards (new class(es) "
            f"{mf.describe_names(new, SHOWN)} do not come after its {len(folder.classes)} classes); pass --classes "
            f"with {where}'s {mf.CLASSES} and the new names added at its end"
        )
    added = {r["source"] for r in change.added}
    items = [i for i in plan.items if i.rel in added]
    fingerprint = mf.fingerprint({"appended_to": folder.manifest["fingerprint"], "plan": plan.fingerprint})
    appends = [*folder.manifest.get("source", {}).get("appends", []), len(items)]
    return replace(
        plan,
        items=items,
        fingerprint=fingerprint,
        inputs=folder.inputs + [r for r in plan.inputs if r["source"] in added],
        source={**plan.source, "appends": appends},
        base=starting_progress(folder),
        accepts=frozenset({folder.manifest["fingerprint"]}),
    )


def starting_progress(folder: Folder) -> dict[str, SplitProgress]:
    """The folder's shards, rejections and warnings per split, as a run's committed progress (its inputs all
    taken: the added ones are numbered from 0). The manifest keeps class counts per split, not per shard:
    the split's first shard carries them, which is all the counts are summed for."""
    progress: dict[str, SplitProgress] = {}
    splits = folder.manifest.get("splits", {})
    for entry in folder.manifest.get("shards", []):
        sp = progress.setdefault(entry["split"], SplitProgress())
        per_class = splits.get(entry["split"], {}).get("per_class", {}) if not sp.shards else {}
        sp.shards.append(ShardRecord(**entry, per_class=dict(per_class)))
    for name, records in (("rejected", folder.rejected), ("warnings", folder.warnings)):
        for r in records:
            getattr(progress.setdefault(r["split"], SplitProgress()), name).append(r)
    return progress
