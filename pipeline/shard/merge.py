"""Join the outputs of `--part I/N` runs into one shard folder.

Each part numbers its shards from 0, so merging renumbers them per split in
part order (part 0's train shards, then part 1's, ...). Shards are hard-linked
when the folders share a filesystem (instant, no extra space), else copied;
either way through a temp name, and the manifest is written last.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from pipeline.splits import split_order
from pipeline.errors import ShardingError
from pipeline.shard import manifest as mf
from pipeline.shard.core import human_bytes
from pipeline.io.files import atomic_write, fsync_dir, temp_path
from pipeline.shard.lock import OutputLock, live_holder


class MergeError(ShardingError, ValueError):
    """The part folders cannot be merged (different settings or classes, duplicate or missing parts)."""


@dataclass
class MergeReport:
    out: Path
    parts: list[Path]
    manifest: dict

    def summary(self) -> str:
        t = self.manifest["totals"]
        splits = ", ".join(
            f"{k}: {v['samples']} videos in {v['shards']} shard(s)" for k, v in self.manifest["splits"].items()
        )
        return (
            f"merged {len(self.parts)} part(s) into {self.out}: {splits}; {t['rejected']} rejected; "
            f"{human_bytes(t['bytes'])}"
        )


def _part_index(m: dict, folder: Path) -> tuple[int, int]:
    part = m.get("source", {}).get("part")
    if not part:
        raise MergeError(f"{folder} was not sharded with --part I/N; nothing to merge it with")
    i, n = (int(x) for x in part.split("/"))
    return i, n


def _check_parts(folders: list[Path], manifests: list[dict], allow_missing: bool) -> list[int]:
    """Validate that the parts belong together; return their order (by part index)."""
    idx = [_part_index(m, f) for m, f in zip(manifests, folders)]
    if len({n for _, n in idx}) != 1:
        raise MergeError(
            f"parts come from different N: {', '.join(f'{f} ({i}/{n})' for f, (i, n) in zip(folders, idx))}"
        )
    seen: dict[int, Path] = {}
    for f, (i, _) in zip(folders, idx):
        if i in seen:
            raise MergeError(f"part {i} given twice: {seen[i]} and {f}")
        seen[i] = f
    n = idx[0][1]
    missing = sorted(set(range(n)) - set(seen))
    if missing and not allow_missing:
        raise MergeError(f"parts {missing} of {n} are missing; pass them all, or --allow-missing-parts")
    ref = manifests[0]
    for f, m in zip(folders[1:], manifests[1:]):
        if m["settings"] != ref["settings"]:
            differ = sorted(
                k for k in set(m["settings"]) | set(ref["settings"]) if m["settings"].get(k) != ref["settings"].get(k)
            )
            detail = ", ".join(f"{k}: {m['settings'].get(k)!r} vs {ref['settings'].get(k)!r}" for k in differ[:6])
            raise MergeError(
                f"{f} was encoded with other settings than {folders[0]} ({detail}); re-run it with the same options"
            )
        if m["source"]["layout"] != ref["source"]["layout"]:
            raise MergeError(f"{f} has layout {m['source']['layout']}, {folders[0]} has {ref['source']['layout']}")
    classes = [mf.read_class_file(f / mf.CLASSES) for f in folders]
    for f, c in zip(folders[1:], classes[1:]):
        if c != classes[0]:
            raise MergeError(
                f"{f / mf.CLASSES} differs from {folders[0] / mf.CLASSES}; shard all parts with one --classes file"
            )
    return sorted(range(len(folders)), key=lambda k: idx[k][0])


def _place(src: Path, dst: Path, copy: bool) -> None:
    """Link (or copy) `src` to `dst` through a temp name."""
    tmp = temp_path(dst)  # unique: nothing to clear first
    if not copy:
        try:
            os.link(src, tmp)
            os.replace(tmp, dst)
            return
        except OSError:
            pass  # another filesystem, or links not allowed: copy instead
    with open(src, "rb") as fi:
        atomic_write(dst, lambda fo: shutil.copyfileobj(fi, fo, 1 << 22))


def _split_order(names: set[str]) -> list[str]:
    return sorted(names, key=split_order)


def merge_parts(
    parts: list[str | os.PathLike], out: str | os.PathLike, *, copy: bool = False, allow_missing: bool = False
) -> MergeReport:
    """Merge part folders into `out`; returns a `MergeReport` (its `manifest` is the merged manifest)."""
    folders = [Path(p).resolve() for p in parts]
    out = Path(out).resolve()
    if out in folders:
        raise MergeError(f"--out {out} is one of the parts; merge into a new folder")
    for folder in folders:
        holder = live_holder(folder)
        if holder is not None:
            raise MergeError(f"part {folder} is still being written by {holder.describe()}: wait for it to finish")
    manifests = [mf.read_manifest(f) for f in folders]
    order = _check_parts(folders, manifests, allow_missing)
    folders, manifests = [folders[k] for k in order], [manifests[k] for k in order]
    fp = mf.fingerprint({"merged": [m["fingerprint"] for m in manifests]})
    foreign = mf.local_foreign_outputs(out)
    if foreign:
        raise MergeError(
            f"{out} holds file(s) that `python -m pipeline.shard` did not write, under names a merge writes: "
            f"{mf.describe_names(foreign)}. Nothing was changed; merge into a new or empty folder"
        )
    previous = mf.existing_fingerprint(out) if out.is_dir() else None
    if previous is not None and previous != fp:
        raise MergeError(f"{out} already holds other shards; merge into a new or empty folder")
    with OutputLock(out, command="pipeline.shard merge"):  # checked above: now write, one merge at a time
        return _write_merged(folders, manifests, fp, out, copy)


def _write_merged(folders: list[Path], manifests: list[dict], fp: str, out: Path, copy: bool) -> MergeReport:
    mf.save_state(out, fp, {})  # claims the folder: a rerun after a crash knows the linked shards are its own
    shards, per_split = _link_shards(folders, manifests, out, copy)
    fsync_dir(out)
    rejected, warnings, inputs = (_jsonl(folders, name) for name in (mf.REJECTED, mf.WARNINGS, mf.INPUTS))
    manifest = _merged_manifest(manifests, folders, fp, shards, per_split, rejected)
    manifest["warnings"] = {"file": mf.WARNINGS, "count": len(warnings)}
    mf.write_outputs(out, manifest, mf.read_class_file(folders[0] / mf.CLASSES), rejected, warnings, inputs)
    (out / mf.STATE).unlink()
    return MergeReport(out, folders, manifest)


def _jsonl(folders: list[Path], name: str) -> list[dict]:
    """The records of `name` (rejected.jsonl, warnings.jsonl, inputs.jsonl) of every part, in part order."""
    records = []
    for folder in folders:
        path = folder / name
        if path.is_file():
            records += mf.read_jsonl(path.read_bytes())
    return records


def _link_shards(folders: list[Path], manifests: list[dict], out: Path, copy: bool) -> tuple[list[dict], dict]:
    splits = _split_order({s["split"] for m in manifests for s in m["shards"]})
    shards, per_split = [], {}
    for split in splits:
        n = 0
        per_class: Counter[str] = Counter()
        for f, m in zip(folders, manifests):
            per_class.update(m["splits"].get(split, {}).get("per_class", {}))
            for s in (s for s in m["shards"] if s["split"] == split):
                src = f / s["file"]
                if not src.is_file() or src.stat().st_size != s["bytes"]:
                    raise MergeError(
                        f"{src} is missing or not {s['bytes']} bytes as its manifest says; re-run that part"
                    )
                name = mf.shard_name(split, n)
                _place(f / s["index"], out / Path(name).with_suffix(".idx"), copy)
                _place(src, out / name, copy)
                shards.append({**s, "file": name, "index": Path(name).with_suffix(".idx").name})
                n += 1
        mine = [s for s in shards if s["split"] == split]
        per_split[split] = {
            "samples": sum(s["samples"] for s in mine),
            "shards": len(mine),
            "bytes": sum(s["bytes"] for s in mine),
            "per_class": dict(sorted(per_class.items())),
        }
    return shards, per_split


def _merged_manifest(
    manifests: list[dict], folders: list[Path], fp: str, shards: list[dict], per_split: dict, rejected: list[dict]
) -> dict:
    ref = manifests[0]
    reasons = Counter(r["reason"] for r in rejected)
    return {
        "format": mf.FORMAT_VERSION,
        "tool": {"name": mf.TOOL, "version": mf.tool_version()},
        "fingerprint": fp,
        "source": {
            **ref["source"],
            "part": None,
            "merged_from": [
                {"dir": str(f), "part": m["source"]["part"], "fingerprint": m["fingerprint"]}
                for f, m in zip(folders, manifests)
            ],
        },
        "settings": ref["settings"],
        "classes": ref["classes"],
        "splits": per_split,
        "shards": shards,
        "rejected": {"file": mf.REJECTED, "count": len(rejected), "by_reason": dict(sorted(reasons.items()))},
        "totals": {
            "inputs": sum(m["totals"]["inputs"] for m in manifests),
            "samples": sum(s["samples"] for s in shards),
            "rejected": len(rejected),
            "shards": len(shards),
            "bytes": sum(s["bytes"] for s in shards),
        },
        "run": {"merged": True},
    }
