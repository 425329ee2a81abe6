"""Samples of WebDataset tar shards, located through their DALI `.idx` files.

The loader reads a sample's members straight out of the tar by offset (a
memory map per shard), so any sample can be fetched in any order: that is
what lets an epoch be a pure permutation and a resume start at any batch.

Shard contract (written by `pipeline.shard`): `DIR/<split>-NNNNNN.tar` with
`DIR/<split>-NNNNNN.idx` beside it (`wds2idx` format: `v1.2 N`, then one line
per sample of `ext offset size name` groups), `DIR/classes.json` (class
names in label order) and `DIR/manifest.json` (`["settings"]["codec"]`).
Each sample has `<key>.webm` (VP9) or `<key>.mp4` (H.264), `<key>.lbl`
(int32 LE label), `<key>.frames` (int32 LE decoded frame count) and
`<key>.json` (key, class, label, frames, fps, width, height, ...).
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VIDEO_EXTS = {"webm": "vp9", "mp4": "h264"}
REQUIRED = ("lbl", "frames", "json")
VERIFY_HINT = "check the shards with `python -m pipeline.verify {dir}` and re-create bad ones with `python -m pipeline.shard`"


class ShardError(ValueError):
    """A shard, its index or a sample in it is missing or malformed."""


def find_shards(shards: str | Path | Sequence[str | Path], split: str | None = None) -> list[Path]:
    """A directory (all `*.tar`, or `<split>-*.tar`, sorted) or an explicit list -> tar paths."""
    if isinstance(shards, (str, Path)):
        folder = Path(shards)
        if not folder.exists():
            raise FileNotFoundError(
                f"shard directory {folder} does not exist: build it with "
                f"`python -m pipeline.shard SRC --out {folder}`"
            )
        if not folder.is_dir():
            raise ShardError(f"{folder} is not a directory: pass a shard directory or a list of .tar paths")
        pattern = f"{split}-*.tar" if split else "*.tar"
        tars = sorted(folder.glob(pattern))
        if not tars:
            raise ShardError(
                f"no shards matching {pattern!r} in {folder}: build them with "
                f"`python -m pipeline.shard SRC --out {folder}`"
            )
        return tars
    tars = [Path(t) for t in shards]
    if not tars:
        raise ShardError("empty shard list: pass a shard directory or at least one .tar path")
    if split is not None:
        raise ShardError("split= selects shards inside a directory; with an explicit list, pass only the tars you want")
    for tar in tars:
        if not tar.is_file():
            raise FileNotFoundError(f"shard {tar} does not exist")
    return tars


def index_path(tar: Path) -> Path:
    return tar.with_suffix(".idx")


def read_index(idx: Path, tar: Path) -> list[dict[str, tuple[int, int, str]]]:
    """Parse a `wds2idx` index into per-sample {ext: (offset, size, member name)}."""
    if not idx.is_file():
        raise FileNotFoundError(
            f"missing DALI index {idx} for shard {tar}: build it with `wds2idx {tar} {idx}` "
            f"or re-run `python -m pipeline.shard`"
        )
    lines = idx.read_text().splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1.") or not head[1].isdigit():
        raise ShardError(f"{idx} is not a DALI webdataset index (first line {lines[:1]}): rebuild it with `wds2idx {tar} {idx}`")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) % 4:
            raise ShardError(f"{idx} line {number} is malformed: rebuild it with `wds2idx {tar} {idx}`")
        samples.append(
            {parts[i]: (int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]) for i in range(0, len(parts), 4)}
        )
    if len(samples) != int(head[1]):
        raise ShardError(f"{idx} announces {head[1]} samples but lists {len(samples)}: rebuild it with `wds2idx {tar} {idx}`")
    return samples


def key_of(member: str) -> str:
    """'dir/key.ext' -> 'dir/key' (the extension starts at the first dot of the base name)."""
    slash = member.rfind("/") + 1
    dot = member.find(".", slash)
    return member if dot < 0 else member[:dot]


@dataclass(frozen=True)
class SampleRef:
    """Where one sample's members lie: shard number and (offset, size) per member."""

    shard: int
    key: str
    video: tuple[int, int]
    lbl: tuple[int, int]
    frames: tuple[int, int]
    meta: tuple[int, int]


class ShardSet:
    """All samples of a list of shards, in shard order then tar order."""

    def __init__(self, tars: list[Path], samples: list[SampleRef], video_ext: str, classes: list[str]):
        self.tars = tars
        self.samples = samples
        self.video_ext = video_ext
        self.codec = VIDEO_EXTS[video_ext]
        self.classes = classes
        self._maps: dict[int, mmap.mmap] = {}

    @classmethod
    def open(cls, shards: str | Path | Sequence[str | Path], split: str | None = None) -> ShardSet:
        tars = find_shards(shards, split)
        samples: list[SampleRef] = []
        exts: set[str] = set()
        for number, tar in enumerate(tars):
            entries = read_index(index_path(tar), tar)
            _check_not_truncated(tar, entries)
            for entry in entries:
                ref, ext = _sample_ref(number, tar, entry)
                samples.append(ref)
                exts.add(ext)
        if not samples:
            raise ShardError(f"the shards {[str(t) for t in tars]} hold no samples")
        if len(exts) > 1:
            raise ShardError(f"the shards mix video formats {sorted(exts)}: re-shard them with one --codec")
        return cls(tars, samples, exts.pop(), read_classes(tars))

    def __len__(self) -> int:
        return len(self.samples)

    def _map(self, shard: int) -> mmap.mmap:
        if shard not in self._maps:
            with open(self.tars[shard], "rb") as f:
                self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[shard]

    def member(self, index: int, name: str) -> memoryview:
        ref = self.samples[index]
        offset, size = getattr(ref, name)
        view = memoryview(self._map(ref.shard))[offset : offset + size]
        if len(view) != size:
            raise ShardError(
                f"{self.where(index)}: member .{name} ends past the end of the file (truncated shard); "
                + VERIFY_HINT.format(dir=self.tars[ref.shard].parent)
            )
        return view

    def video(self, index: int) -> np.ndarray:
        return np.frombuffer(self.member(index, "video"), dtype=np.uint8)

    def label(self, index: int) -> int:
        return int(np.frombuffer(self.member(index, "lbl"), dtype="<i4")[0])

    def frame_count(self, index: int) -> int:
        return int(np.frombuffer(self.member(index, "frames"), dtype="<i4")[0])

    def meta(self, index: int) -> dict:
        return json.loads(bytes(self.member(index, "meta")))

    def key(self, index: int) -> str:
        return self.samples[index].key

    def where(self, index: int) -> str:
        """'shard file, sample key' for error messages."""
        ref = self.samples[index]
        return f"shard {self.tars[ref.shard]}, sample {ref.key!r}"

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()


def _sample_ref(shard: int, tar: Path, entry: dict[str, tuple[int, int, str]]) -> tuple[SampleRef, str]:
    name = next(iter(entry.values()))[2]
    key = key_of(name)
    videos = [ext for ext in VIDEO_EXTS if ext in entry]
    missing = [ext for ext in REQUIRED if ext not in entry]
    problem = ""
    if missing:
        problem = "missing " + ", ".join("." + m for m in missing)
    elif len(videos) != 1:
        problem = "needs exactly one .webm or .mp4 video"
    if problem:
        raise ShardError(
            f"shard {tar}, sample {key!r}: {problem} (has {sorted(entry)}); "
            f"re-create the shard with `python -m pipeline.shard`"
        )

    def span(ext: str) -> tuple[int, int]:
        return entry[ext][0], entry[ext][1]

    ref = SampleRef(shard, key, span(videos[0]), span("lbl"), span("frames"), span("json"))
    return ref, videos[0]


def _check_not_truncated(tar: Path, entries: list[dict[str, tuple[int, int, str]]]) -> None:
    end = max((o + s for entry in entries for o, s, _ in entry.values()), default=0)
    size = tar.stat().st_size
    if size < end:
        raise ShardError(
            f"shard {tar} is truncated: {size} bytes but its index needs {end}; "
            + VERIFY_HINT.format(dir=tar.parent)
        )


def read_classes(tars: list[Path]) -> list[str]:
    """Class names from `classes.json` beside the shards (one list for all of them)."""
    found: dict[Path, list[str]] = {}
    for folder in sorted({t.parent for t in tars}):
        path = folder / "classes.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"missing {path}: the shard directory needs the class list written by `python -m pipeline.shard`"
            )
        classes = json.loads(path.read_text())
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise ShardError(f"{path} must hold a JSON list of class names")
        found[folder] = classes
    lists = list(found.values())
    if any(c != lists[0] for c in lists[1:]):
        raise ShardError(f"the shard directories {sorted(map(str, found))} have different classes.json")
    return lists[0]
