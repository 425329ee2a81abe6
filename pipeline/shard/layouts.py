"""The four dataset layouts people download, turned into one deterministic work list.

- `folder`: `SRC/<class>/<video>` or `SRC/{train,val}/<class>/<video>`.
- `kinetics`: annotation CSVs (`label,youtube_id,time_start,time_end,split`) and
  videos named `<youtube_id>_<start:06d>_<end:06d>.<ext>` anywhere under SRC.
- `sthv2`: Something-Something V2: `<id>.webm`, a labels JSON (template -> index)
  and train/validation JSON lists.
- `sthv1`: Something-Something V1: JPEG frame folders `<id>/00001.jpg...`, a
  labels CSV (one name per line, line = index) and `id;label` split lists.

Every layout yields `WorkItem`s in a canonical order: sorted by source path,
then shuffled per split with a fixed seed. Shuffling before sharding matters:
a reader's shuffle buffer cannot undo class-sorted shards.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.frames import FRAME_NAME, numbered_frames
from pipeline.splits import SPLITS, normalize_split, split_order

VIDEO_EXTS = frozenset(".mp4 .m4v .mov .webm .mkv .avi .mpg .mpeg .flv .wmv .3gp .ogv .ts .mts .m2ts".split())
LAYOUTS = ("auto", "folder", "kinetics", "sthv2", "sthv1")
STHV1_FPS = 12.0  # Something-Something V1 frames were extracted at 12 fps


class LayoutError(ValueError):
    """The source folder does not look like the requested (or any known) layout."""


@dataclass(frozen=True)
class WorkItem:
    """One input video (or frame folder) and where its sample goes."""

    key: str
    split: str
    class_name: str
    rel: str  # path relative to SRC, POSIX separators
    path: str  # absolute path given to ffmpeg
    kind: str = "video"  # "video" | "frames"
    fps: float | None = None  # frames only
    missing: bool = False  # listed by the annotations but not on disk
    problem: tuple[str, str] | None = None  # (reject reason, message) found while scanning the folder


@dataclass
class Dataset:
    layout: str
    root: Path | str  # a URL for a source on object storage (pipeline.shard.source)
    items: list[WorkItem]
    classes: list[str]  # label order: index i is label i
    notes: list[str] = field(default_factory=list)


def make_key(rel: str) -> str:
    """A readable, unique, dot-free sample key: sanitized stem + a hash of the relative path."""
    name = Path(rel)
    stem = name.stem if name.suffix.lower() in VIDEO_EXTS else name.name
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    clean = re.sub(r"[^A-Za-z0-9_-]+", "_", ascii_stem).strip("_-")[:40] or "video"
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    return f"{clean}-{digest}"


def videos_under(folder: Path) -> list[Path]:
    """Video files below `folder`, sorted, skipping hidden files and folders (e.g. a shard run's staging)."""
    return walk_videos(folder)[0]


def walk_videos(folder: Path) -> tuple[list[Path], list[tuple[Path, str, str]]]:
    """(videos, problems) below `folder`: symlinked folders are followed once each; hidden names skipped.

    Problems are (path, reject reason, message) for what cannot become a
    sample: a dangling symlink with a video extension, a file that cannot be
    opened, a folder that links back into itself (a loop).
    """
    videos, problems = [], []
    seen: set[tuple[int, int]] = set()
    real_root = os.path.realpath(folder) + os.sep
    for top, dirs, files in os.walk(folder, followlinks=True):
        st = os.stat(top)
        ancestor = top != str(folder) and real_root.startswith(os.path.realpath(top) + os.sep)
        if (st.st_dev, st.st_ino) in seen or ancestor:
            problems.append(
                (
                    Path(top),
                    "directory_loop",
                    f"{Path(top).relative_to(folder).as_posix() or '.'} links back to a folder already "
                    "scanned (a directory loop); its contents are taken once",
                )
            )
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(top) / name
            if name.startswith(".") or path.suffix.lower() not in VIDEO_EXTS:
                continue
            if path.is_symlink() and not path.exists():
                problems.append((path, "dangling_symlink", f"symlink to {os.readlink(path)}, which does not exist"))
            elif not os.access(path, os.R_OK):
                problems.append((path, "unreadable", "the file cannot be read (permissions)"))
            else:
                videos.append(path)
    return sorted(videos), problems


def _visible_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _item(root: Path, path: Path, split: str, class_name: str, **kw) -> WorkItem:
    rel = path.relative_to(root).as_posix()
    return WorkItem(key=make_key(rel), split=split, class_name=class_name, rel=rel, path=str(path), **kw)


# ---- class-per-folder -------------------------------------------------------


def _has_split_dirs(root: Path) -> bool:
    return any(normalize_split(d.name) for d in _visible_dirs(root))


def scan_folder(root: Path, split: str | None = None) -> Dataset:
    """`SRC/<class>/<video>` (all in `split`; default: SRC's own name when it is a split name, else train)
    or `SRC/{train,val,test}/<class>/<video>` (split folders by any of their names; other folders beside
    them are not used, and the notes say so)."""
    notes = []
    if _has_split_dirs(root):
        groups = [(normalize_split(d.name), d) for d in _visible_dirs(root) if normalize_split(d.name)]
        notes += [
            f"folder {d} not used: {d.name!r} is not a split name ({', '.join(SPLITS)}, or validation, testing, ...)"
            for d in _visible_dirs(root)
            if not normalize_split(d.name)
        ]
    else:
        groups = [(split or normalize_split(root.name) or "train", root)]
    items = []
    for split_name, split_dir in groups:
        for class_dir in _visible_dirs(split_dir):
            files, problems = walk_videos(class_dir)
            items += [_item(root, p, split_name, class_dir.name) for p in files]
            items += [
                _item(root, p, split_name, class_dir.name, problem=(reason, message)) for p, reason, message in problems
            ]
    if not items:
        raise LayoutError(
            f"{root}: no videos found as <class>/<video> or <split>/<class>/<video> "
            f"(extensions: {' '.join(sorted(VIDEO_EXTS))})"
        )
    return Dataset("folder", root, items, sorted({i.class_name for i in items}), notes)


# ---- Kinetics CSV -------------------------------------------------------------

KINETICS_COLUMNS = {"label", "youtube_id", "time_start", "time_end", "split"}


def _csv_header(path: Path) -> set[str]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        return {h.strip() for h in next(csv.reader(f), [])}


def _check_kinetics_header(path: Path, header: set[str]) -> None:
    missing = sorted(KINETICS_COLUMNS - header)
    if missing:
        raise LayoutError(
            f"{path} looks like a Kinetics annotation CSV but has no {', '.join(missing)} column: a Kinetics CSV "
            f"needs {', '.join(sorted(KINETICS_COLUMNS))}; fix its header (or pass --layout folder if it is "
            "not one)"
        )


def _kinetics_csvs(root: Path) -> list[Path]:
    """The Kinetics annotation CSVs in SRC or SRC/annotations; one that has some of the columns (a
    youtube_id, or three of the five) but not all is an error naming it, never a silent fallback."""
    found = []
    for folder in (root, root / "annotations"):
        for p in sorted(folder.glob("*.csv")) if folder.is_dir() else []:
            header = _csv_header(p)
            present = header & KINETICS_COLUMNS
            if "youtube_id" in present or len(present) >= 3:
                _check_kinetics_header(p, header)
                found.append(p)
    return found


def kinetics_name(youtube_id: str, start: float, end: float) -> str:
    """The official downloader's file stem: `<id>_<start:06d>_<end:06d>`."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


def _kinetics_stem(row: dict, path: Path, line: int) -> str:
    try:
        return kinetics_name(row["youtube_id"], row["time_start"], row["time_end"])
    except (ValueError, TypeError):
        raise LayoutError(
            f"{path}, line {line}: time_start {row.get('time_start')!r} and time_end {row.get('time_end')!r} must "
            "be numbers (seconds); fix that row"
        ) from None


def scan_kinetics(root: Path, annotations: list[Path] | None = None) -> Dataset:
    csvs = annotations or _kinetics_csvs(root)
    if not csvs:
        raise LayoutError(f"{root}: no Kinetics CSV with columns {sorted(KINETICS_COLUMNS)} in SRC or SRC/annotations")
    for csv_path in annotations or []:
        if not Path(csv_path).is_file():
            raise LayoutError(f"--annotations {csv_path}: no such file")
        _check_kinetics_header(Path(csv_path), _csv_header(Path(csv_path)))
    on_disk: dict[str, Path] = {}
    for p in videos_under(root):
        on_disk.setdefault(p.stem, p)
    items, ignored, seen = [], 0, set()
    for csv_path in csvs:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            reader.fieldnames = [h.strip() for h in reader.fieldnames or []]
            for row in reader:
                split = normalize_split(row.get("split") or "")
                label = (row.get("label") or "").strip()
                stem = _kinetics_stem(row, Path(csv_path), reader.line_num)
                if split is None or not label or stem in seen:
                    ignored += 1  # test rows (no label to learn or score) and repeated rows
                    continue
                seen.add(stem)
                path = on_disk.get(stem)
                if path is None:
                    rel = f"{stem}.mp4"
                    items.append(WorkItem(make_key(rel), split, label, rel, str(root / rel), missing=True))
                else:
                    items.append(_item(root, path, split, label))
    notes = [f"ignored {ignored} CSV rows without a train/val/test split or label, or repeated"] if ignored else []
    return Dataset("kinetics", root, items, sorted({i.class_name for i in items}), notes)


# ---- Something-Something ------------------------------------------------------


def _find_optional(root: Path, patterns: list[str]) -> Path | None:
    for folder in (root, root / "annotations", root / "labels"):
        for pattern in patterns:
            hits = sorted(folder.glob(pattern)) if folder.is_dir() else []
            if hits:
                return hits[0]
    return None


def _find_one(root: Path, patterns: list[str], what: str) -> Path:
    found = _find_optional(root, patterns)
    if found is None:
        raise LayoutError(
            f"{root}: no {what} found (looked for {', '.join(patterns)} in SRC, SRC/annotations, SRC/labels)"
        )
    return found


def _media_dir(root: Path, candidates: list[str]) -> Path:
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return root


def sth_template_key(template: str) -> str:
    """'Putting [something] on [something]' -> 'Putting something on something' (the labels JSON key)."""
    return template.replace("[", "").replace("]", "")


def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as err:
        raise LayoutError(f"{path}: cannot read it ({err})") from None
    except json.JSONDecodeError as err:
        raise LayoutError(
            f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; re-download or fix it"
        ) from None


def _sthv2_entries(path: Path) -> list[dict]:
    """A V2 split list: a JSON list of {"id", "template", ...}; anything else names the file and the entry."""
    entries = _load_json(path)
    if not isinstance(entries, list):
        raise LayoutError(f"{path}: expected a JSON list of videos, found {type(entries).__name__}")
    for n, e in enumerate(entries):
        missing = [k for k in ("id", "template") if not isinstance(e, dict) or k not in e]
        if missing:
            keys = sorted(e) if isinstance(e, dict) else type(e).__name__
            raise LayoutError(
                f"{path}: entry {n} has no {' or '.join(repr(k) for k in missing)} (it has {keys}); each entry "
                'needs "id" and "template"'
            )
    return entries


def _listed_item(root: Path, path: Path, split: str, class_name: str, frames: bool = False) -> WorkItem:
    """An input a list names: missing when nothing is on disk under its name; something of the other kind
    there (a folder named like a video, a file where a frame folder belongs) is a problem named as such."""
    rel = path.relative_to(root).as_posix()
    kind = {"kind": "frames", "fps": STHV1_FPS} if frames else {}
    wrong = path.is_file() if frames else path.is_dir()
    if wrong:
        what = "a file, not a folder of frames" if frames else "a folder, not a video file"
        return WorkItem(make_key(rel), split, class_name, rel, str(path), problem=("unreadable", f"is {what}"), **kind)
    there = path.is_dir() if frames else path.is_file()
    return WorkItem(make_key(rel), split, class_name, rel, str(path), missing=not there, **kind)


def scan_sthv2(root: Path) -> Dataset:
    labels = _load_json(_find_one(root, ["*labels.json"], "Something-Something V2 labels JSON"))
    classes = [name for name, _ in sorted(labels.items(), key=lambda kv: int(kv[1]))]
    if sorted(int(v) for v in labels.values()) != list(range(len(classes))):
        raise LayoutError(f"{root}: labels JSON indices are not 0..{len(classes) - 1}")
    video_dir = _media_dir(root, ["20bn-something-something-v2", "videos"])
    items = []
    for split, patterns in (("train", ["*train.json"]), ("val", ["*validation.json", "*val.json"])):
        listed = _find_optional(root, patterns)
        if listed is None:
            continue
        for e in _sthv2_entries(listed):
            name = sth_template_key(e["template"])
            if name not in labels:
                raise LayoutError(f"{root}: template {e['template']!r} of video {e['id']} is not in the labels JSON")
            path = video_dir / f"{e['id']}.webm"
            items.append(_listed_item(root, path, split, name))
    if not items:
        raise LayoutError(f"{root}: no train/validation JSON lists for Something-Something V2")
    return Dataset("sthv2", root, items, classes, _unlabelled_test_lists(root, "*test*.json"))


def scan_sthv1(root: Path) -> Dataset:
    labels_csv = _find_one(root, ["*labels.csv"], "Something-Something V1 labels CSV")
    classes = [line.strip() for line in labels_csv.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    known = set(classes)
    frame_dir = _media_dir(root, ["20bn-something-something-v1", "rawframes", "frames"])
    items = []
    for split, patterns in (("train", ["*train.csv"]), ("val", ["*validation.csv", "*val.csv"])):
        listed = _find_optional(root, patterns)
        if listed is None:
            continue
        for line in filter(str.strip, listed.read_text(encoding="utf-8-sig").splitlines()):
            vid, _, name = line.partition(";")
            if name.strip() not in known:
                raise LayoutError(f"{root}: label {name.strip()!r} of video {vid} is not in {labels_csv.name}")
            items.append(_listed_item(root, frame_dir / vid.strip(), split, name.strip(), frames=True))
    if not items:
        raise LayoutError(f"{root}: no train/validation CSV lists for Something-Something V1")
    return Dataset("sthv1", root, items, classes, _unlabelled_test_lists(root, "*test*.csv"))


def _unlabelled_test_lists(root: Path, pattern: str) -> list[str]:
    """Something-Something's test lists name videos without their labels: said, not silently skipped."""
    return [
        f"test list {p} not used: Something-Something's test lists carry no labels, so its videos cannot be "
        "sharded as a labelled split"
        for p in sorted(root.glob(pattern))
    ]


# ---- detection and ordering ---------------------------------------------------


def detect_layout(root: Path) -> str:
    """Guess the layout from marker files; class-per-folder is the fallback."""

    def any_glob(*patterns: str) -> bool:
        return any(
            next(iter(sorted(d.glob(p))), None) is not None
            for d in (root, root / "annotations", root / "labels")
            if d.is_dir()
            for p in patterns
        )

    if any_glob("*labels.json"):
        return "sthv2"
    if any_glob("*labels.csv"):
        return "sthv1"
    if _kinetics_csvs(root):
        return "kinetics"
    return "folder"


def frames_pattern(folder: Path) -> tuple[str, int, int]:
    """ffmpeg pattern, first number and count for a folder of numbered JPEGs ('00001.jpg' -> '%05d.jpg')."""
    numbered = numbered_frames(folder)
    if not numbered:
        raise FileNotFoundError(f"{folder}: no numbered JPEG frames (expected 00001.jpg, 00002.jpg, ...)")
    first, path = numbered[0]
    digits, ext = FRAME_NAME.fullmatch(path.name).groups()
    return f"%0{len(digits)}d.{ext}", first, len(numbered)


def canonical_order(items: list[WorkItem], seed: int = 0) -> list[WorkItem]:
    """Sort by (split, path), then shuffle within each split with a fixed seed."""
    by_split: dict[str, list[WorkItem]] = {}
    for item in sorted(items, key=lambda i: (split_order(i.split), i.rel)):
        by_split.setdefault(item.split, []).append(item)
    ordered = []
    for split, group in by_split.items():
        random.Random(f"{seed}:{split}").shuffle(group)
        ordered += group
    return ordered


def check_unique_keys(items: list[WorkItem]) -> None:
    seen: dict[str, str] = {}
    for item in items:
        if item.key in seen:
            raise LayoutError(f"two inputs map to sample key {item.key!r}: {seen[item.key]} and {item.rel}")
        seen[item.key] = item.rel


def scan(
    root: str | Path,
    layout: str = "auto",
    *,
    split: str | None = None,
    annotations: list[Path] | None = None,
    seed: int = 0,
) -> Dataset:
    """Enumerate `root` as `layout` into a deterministic, canonically ordered `Dataset`.

    `split`: the split of a class-folder `root` without split folders (default: `root`'s own name when
    it is a split name, e.g. `SRC/test`, else train).
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory; pass the dataset folder")
    if layout not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if layout == "auto":
        layout = "kinetics" if annotations else detect_layout(root)
    if split is not None and normalize_split(split) is None:
        raise LayoutError(f"split {split!r}: use {', '.join(SPLITS)} (or validation, testing, ...)")
    scanners = {
        "folder": lambda: scan_folder(root, normalize_split(split) if split else None),
        "kinetics": lambda: scan_kinetics(root, annotations),
        "sthv2": lambda: scan_sthv2(root),
        "sthv1": lambda: scan_sthv1(root),
    }
    ds = scanners[layout]()
    check_unique_keys(ds.items)
    ds.items = canonical_order(ds.items, seed)
    return ds
