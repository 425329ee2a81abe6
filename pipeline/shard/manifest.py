"""What `pipeline.shard` writes besides the shards: manifest, classes, rejections, resume state.

`manifest.json` is the contract with the loader and `pipeline.verify`:
`settings.codec` ("vp9" | "h264" | "jpeg"), every shard's file, sample count, byte
size and sha256, per-split and per-class counts. Everything but the `run`
section is a pure function of inputs and settings, so an interrupted and
resumed run writes the same manifest as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.splits import split_order
from pipeline.io.files import atomic_write_text
from pipeline.format.classes import parse_classes

FORMAT_VERSION = 1
TOOL = "pipeline.shard"
MANIFEST = "manifest.json"
CLASSES = "classes.json"
REJECTED = "rejected.jsonl"
WARNINGS = "warnings.jsonl"  # sharded inputs that are imperfect (decode only partly, gaps in frame numbering)
INPUTS = "inputs.jsonl"  # every input of the plan, in its order: what a later run compares itself with
STATE = ".shard-state.json"
STAGING = ".staging"
SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<n>\d{6})\.(?P<ext>tar|idx)$")


def tool_version() -> str:
    try:
        from importlib.metadata import version

        return version("tpn-toolkit")
    except Exception:  # not installed: running from a checkout
        return "0.1.0"


def shard_name(split: str, n: int) -> str:
    return f"{split}-{n:06d}.tar"


@dataclass
class ShardRecord:
    """One finished shard as the manifest lists it."""

    split: str
    file: str
    index: str
    samples: int
    bytes: int
    sha256: str
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass
class SplitProgress:
    """Resume state of one split: shards committed and the last input they cover."""

    shards: list[ShardRecord] = field(default_factory=list)
    rejected: list[dict] = field(default_factory=list)
    through: int = -1  # ordinal of the last work item covered by committed shards
    warnings: list[dict] = field(default_factory=list)


def fingerprint(payload: dict) -> str:
    """Hash of everything that decides the output: a resumed run must match it exactly."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()


def save_state(out: Path, fp: str, splits: dict[str, SplitProgress]) -> None:
    data = {"fingerprint": fp, "splits": {k: asdict(v) for k, v in splits.items()}}
    atomic_write_text(out / STATE, json.dumps(data))


def load_state(out: Path, fp: str) -> dict[str, SplitProgress] | None:
    """Committed progress of an earlier run with the same fingerprint, or None."""
    try:
        data = json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return None
    if data.get("fingerprint") != fp:
        return None
    splits = {}
    for name, sp in data["splits"].items():
        shards = [ShardRecord(**r) for r in sp["shards"]]
        splits[name] = SplitProgress(shards, sp["rejected"], sp["through"], sp.get("warnings", []))
    return splits


def existing_fingerprint(out: Path) -> str | None:
    """The fingerprint of whatever a previous run left in `out` (state or manifest)."""
    for name in (STATE, MANIFEST):
        try:
            return json.loads((out / name).read_text())["fingerprint"]
        except (OSError, ValueError, KeyError):
            continue
    return None


OUTPUT_NAMES = (MANIFEST, CLASSES, REJECTED, WARNINGS, INPUTS)


def is_output_name(name: str) -> bool:
    """A name `pipeline.shard` writes in an output folder (besides its hidden state, lock and staging)."""
    return name in OUTPUT_NAMES or SHARD_RE.match(name) is not None


def own_manifest(data: bytes | str) -> dict | None:
    """The manifest in `data` when this toolkit wrote it, else None (another tool's, or not JSON)."""
    try:
        manifest = json.loads(data)
    except ValueError:
        return None
    ours = isinstance(manifest, dict) and (manifest.get("tool") or {}).get("name") == TOOL
    return manifest if ours and "fingerprint" in manifest else None


def claimed(out: Path) -> bool:
    """Whether a run of ours is under way in `out`: its resume state is there (saved before any output)."""
    try:
        data = json.loads((out / STATE).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "fingerprint" in data and "splits" in data


def foreign_outputs(names: list[str], manifest: dict | None, run_under_way: bool) -> list[str]:
    """Of the file `names` in an output folder, those under names this toolkit writes that none of its own
    records vouches for: another tool's `train-000000.tar` or `manifest.json` (pure).

    A run of ours under way claims the folder (every such name is its own); a
    finished one vouches for its manifest's shards and the files beside it.
    """
    candidates = sorted(n for n in names if is_output_name(n))
    if run_under_way:
        return []
    if manifest is None:
        return candidates
    vouched = set(OUTPUT_NAMES) | {s[k] for s in manifest.get("shards", []) for k in ("file", "index")}
    return [n for n in candidates if n not in vouched]


def local_foreign_outputs(out: Path) -> list[str]:
    """`foreign_outputs` of a local folder."""
    if not out.is_dir():
        return []
    names = [p.name for p in out.iterdir() if p.is_file()]
    try:
        manifest = own_manifest((out / MANIFEST).read_bytes())
    except OSError:
        manifest = None
    return foreign_outputs(names, manifest, claimed(out))


def describe_names(names: list[str], shown: int = 5) -> str:
    """'a, b, c and 4 more' (pure)."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def shards_intact(out: Path, records: list[ShardRecord]) -> bool:
    """Cheap resume check: every committed shard and index is on disk at its recorded size."""
    for r in records:
        tar, idx = out / r.file, out / r.index
        if not (tar.is_file() and idx.is_file() and tar.stat().st_size == r.bytes):
            return False
    return True


def split_summary(records: list[ShardRecord]) -> dict:
    per_class: Counter[str] = Counter()
    for r in records:
        per_class.update(r.per_class)
    return {
        "samples": sum(r.samples for r in records),
        "shards": len(records),
        "bytes": sum(r.bytes for r in records),
        "per_class": dict(sorted(per_class.items())),
    }


def build_manifest(
    *,
    fp: str,
    source: dict,
    settings: dict,
    classes: list[str],
    records: list[ShardRecord],
    rejected: list[dict],
    inputs: int,
    run: dict,
    warnings: list[dict] | None = None,
) -> dict:
    """The manifest dict (pure): counts are derived from the shard records and rejections."""
    splits = sorted({r.split for r in records}, key=split_order)
    by_split = {s: split_summary([r for r in records if r.split == s]) for s in splits}
    reasons = Counter(r["reason"] for r in rejected)
    shards = [{k: v for k, v in asdict(r).items() if k != "per_class"} for r in records]
    return {
        "format": FORMAT_VERSION,
        "tool": {"name": TOOL, "version": tool_version()},
        "fingerprint": fp,
        "source": source,
        "settings": settings,
        "classes": {"file": CLASSES, "count": len(classes)},
        "splits": by_split,
        "shards": shards,
        "rejected": {"file": REJECTED, "count": len(rejected), "by_reason": dict(sorted(reasons.items()))},
        "warnings": {"file": WARNINGS, "count": len(warnings or [])},
        "totals": {
            "inputs": inputs,
            "samples": sum(r.samples for r in records),
            "rejected": len(rejected),
            "shards": len(records),
            "bytes": sum(r.bytes for r in records),
        },
        "run": run,
    }


def write_outputs(
    out: Path,
    manifest: dict,
    classes: list[str],
    rejected: list[dict],
    warnings: list[dict] | None = None,
    inputs: list[dict] | None = None,
) -> None:
    """classes.json, rejected.jsonl, warnings.jsonl and inputs.jsonl first, manifest last: a manifest means the
    set is complete."""
    atomic_write_text(out / CLASSES, json.dumps(classes, ensure_ascii=False, indent=1) + "\n")
    for name, records in ((REJECTED, rejected), (WARNINGS, warnings or []), (INPUTS, inputs or [])):
        atomic_write_text(out / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    atomic_write_text(out / MANIFEST, json.dumps(manifest, ensure_ascii=False, indent=1) + "\n")


def read_jsonl(data: bytes | str) -> list[dict]:
    """The records of a .jsonl file's text."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_manifest(out: Path) -> dict:
    path = Path(out) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: is {out} a folder written by `python -m pipeline.shard`?") from None
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-run `python -m pipeline.shard`") from None


def read_class_file(path: Path) -> list[str]:
    """A classes.json file (list of names in label order), validated."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ValueError(f"cannot read class list {path}: {err}") from None
    return parse_classes(data, str(path))
