"""Samples of WebDataset tar shards, located through a compact index built from their DALI `.idx` files.

The loader reads a sample's members straight out of the tar by offset, so
any sample can be fetched in any order: that is what lets an epoch be a pure
permutation and a resume start at any batch.

Shard contract (written by `pipeline.shard`): `DIR/<split>-NNNNNN.tar` with
`DIR/<split>-NNNNNN.idx` beside it (`wds2idx` format: `v1.2 N`, then one line
per sample of `ext offset size name` groups), `DIR/classes.json` (class
names in label order) and `DIR/manifest.json`. Every sample has `<key>.lbl`
(int32 LE label), `<key>.frames` (int32 LE frame count) and `<key>.json`
(key, class, label, frames, fps, width, height, ...), and either one video
(`<key>.webm` VP9 or `<key>.mp4` H.264: video shards) or one JPEG per frame
(`<key>.000000.jpg`, `<key>.000001.jpg`, ...: frame shards).

Scale (`SampleIndex`): every per-sample number lives in flat numpy arrays,
built once from the `.idx` files (plus one small read per sample for label,
frame count and size) and cached as one file in `DIR/.index/`, keyed by
the shards' checksums in the manifest (or their sizes and times); later
opens memory-map them (one file), so opening millions of samples takes milliseconds
and processes on one machine share the pages. Open files are bounded
(`FilePool`): at most `max_open` shards are open at a time, least recently
used closed first, whatever the number of shards.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import resource
import shutil
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline import storage
from pipeline.errors import ShardReadError
from pipeline.fileio import temp_path

VIDEO_EXTS = {"webm": "vp9", "mp4": "h264"}
FRAME_RE = re.compile(r"^(\d{6})\.jpg$")
REQUIRED = ("lbl", "frames", "json")
INDEX_DIR = ".index"
INDEX_VERSION = 3
VERIFY_HINT = "check the shards with `python -m pipeline.verify {dir}` and re-create bad ones with `python -m pipeline.shard`"


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
                f"shard directory {folder} does not exist: build it with "
                f"`python -m pipeline.shard SRC --out {folder}`"
            )
        if not folder.is_dir():
            raise ShardReadError(f"{folder} is not a directory: pass a shard directory or a list of .tar paths")
        pattern = f"{split}-*.tar" if split else "*.tar"
        tars = sorted(folder.glob(pattern))
        if not tars:
            present = sorted({p.name.split("-")[0] for p in folder.glob("*-*.tar")})
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
        raise ShardReadError("split= selects shards inside a directory; with an explicit list, pass only the tars you want")
    if len({storage.is_remote(t) for t in tars}) > 1:
        raise ShardReadError("the shard list mixes local paths and URLs: pass shards of one place")
    for tar in tars:
        if isinstance(tar, Path) and not tar.is_file():
            raise FileNotFoundError(f"shard {tar} does not exist")
    return tars


def index_path(tar):
    if isinstance(tar, Path):
        return tar.with_suffix(".idx")
    return str(tar)[: -len(".tar")] + ".idx" if str(tar).endswith(".tar") else f"{tar}.idx"


def read_index(idx, tar) -> list[dict[str, tuple[int, int, str]]]:
    """Parse a `wds2idx` index into per-sample {ext: (offset, size, member name)}."""
    try:
        text = storage.read_bytes(idx).decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"missing DALI index {idx} for shard {tar}: build it with `wds2idx {tar} {idx}` "
            f"or re-run `python -m pipeline.shard`"
        ) from None
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1.") or not head[1].isdigit():
        raise ShardReadError(f"{idx} is not a DALI webdataset index (first line {lines[:1]}): rebuild it with `wds2idx {tar} {idx}`")
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) % 4:
            raise ShardReadError(f"{idx} line {number} is malformed: rebuild it with `wds2idx {tar} {idx}`")
        samples.append(
            {parts[i]: (int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]) for i in range(0, len(parts), 4)}
        )
    if len(samples) != int(head[1]):
        raise ShardReadError(f"{idx} announces {head[1]} samples but lists {len(samples)}: rebuild it with `wds2idx {tar} {idx}`")
    return samples


def key_of(member: str) -> str:
    """'dir/key.ext' -> 'dir/key' (the extension starts at the first dot of the base name)."""
    slash = member.rfind("/") + 1
    dot = member.find(".", slash)
    return member if dot < 0 else member[:dot]


# ----------------------------------------------------------------------------- open files


def default_max_open() -> int:
    """Shards kept open at once: an eighth of the soft descriptor limit, 4..256 (DALI and sockets need the rest)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 256
    return max(4, min(256, soft // 8))


class FilePool:
    """Positional reads from many files with at most `max_open` descriptors open at once.

    Least recently used files are closed first; a file another thread is
    reading from is never closed under it (the pool may then go over the
    limit by the number of concurrent readers). `os.pread` moves no file
    position, so threads share descriptors safely.
    """

    def __init__(self, paths: Sequence[Path], max_open: int | None = None):
        self.paths = list(paths)
        self.max_open = max(1, max_open or default_max_open())
        self._open: OrderedDict[int, int] = OrderedDict()  # file number -> fd
        self._users: dict[int, int] = {}
        self._lock = threading.Lock()

    def read(self, number: int, offset: int, size: int) -> bytes:
        fd = self._acquire(number)
        try:
            data = os.pread(fd, size, offset)
        finally:
            self._release(number)
        return data

    def read_many(self, requests: Sequence[tuple[int, int, int]]) -> list[bytes]:
        """[(file number, offset, size)] -> bytes (local reads are fast enough one by one)."""
        return [self.read(n, o, s) for n, o, s in requests]

    def _acquire(self, number: int) -> int:
        with self._lock:
            self._users[number] = self._users.get(number, 0) + 1
            fd = self._open.get(number)
            if fd is not None:
                self._open.move_to_end(number)
                return fd
        try:
            fd = os.open(self.paths[number], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except BaseException:
            self._release(number)
            raise
        with self._lock:
            if number in self._open:  # another thread opened it meanwhile
                os.close(fd)
                return self._open[number]
            self._open[number] = fd
            self._evict()
            return fd

    def _release(self, number: int) -> None:
        with self._lock:
            self._users[number] -= 1
            if not self._users[number]:
                del self._users[number]
            self._evict()

    def _evict(self) -> None:
        """Close idle files, oldest first, until at most max_open are open (call with the lock held)."""
        for number in list(self._open):
            if len(self._open) <= self.max_open:
                return
            if number not in self._users:
                os.close(self._open.pop(number))

    @property
    def open_count(self) -> int:
        return len(self._open)

    def close(self) -> None:
        with self._lock:
            for fd in self._open.values():
                os.close(fd)
            self._open.clear()


# ----------------------------------------------------------------------------- the index


class SampleIndex:
    """Flat arrays describing every sample of a list of shards (see the module docstring).

    Per sample (length N): shard (uint32), label, frames (int32), width, height
    (uint16), fps (float32), video_off (int64), video_size (int32; frame
    shards: -1), json_off (int64), json_size (int32), key_start (int64, N + 1
    entries into key_bytes). Frame shards add frame_start (int64, N + 1
    entries) into frame_off (int64) and frame_size (int32), one per stored
    frame in frame order. About 60 bytes per sample plus the key and, for
    frame shards, 12 bytes per stored frame.
    """

    ARRAYS = ("shard", "label", "frames", "width", "height", "fps", "video_off", "video_size",
              "json_off", "json_size", "key_start", "key_bytes", "frame_start", "frame_off", "frame_size")

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict, mapped: mmap.mmap | None = None):
        self.arrays = arrays
        self.meta = meta  # {"kind": "video"|"frames", "codec": ..., "ext": ...}
        self._mapped = mapped  # the memory map the arrays view (None: arrays in memory)
        for name in self.ARRAYS:
            setattr(self, name, arrays[name])

    def release(self) -> None:
        """Drop the arrays and unmap index.bin; the index cannot be used afterwards."""
        mapped, self._mapped = self._mapped, None
        self.arrays = {}
        for name in self.ARRAYS:
            setattr(self, name, None)
        if mapped is not None:
            try:
                mapped.close()
            except BufferError:  # a caller still holds a view: the map goes when that view does
                pass

    def __len__(self) -> int:
        return len(self.shard)

    @property
    def nbytes_per_sample(self) -> dict[str, float]:
        n = max(1, len(self))
        return {name: a.nbytes / n for name, a in self.arrays.items()}

    def key(self, i: int) -> str:
        return bytes(self.key_bytes[self.key_start[i] : self.key_start[i + 1]]).decode("utf-8")

    def save(self, folder: Path) -> None:
        """One binary file of all arrays (64-byte aligned) + meta.json with their layout."""
        folder.mkdir(parents=True)
        layout, offset = {}, 0
        with open(folder / "index.bin", "wb") as f:
            for name, a in self.arrays.items():
                a = np.ascontiguousarray(a)
                pad = -offset % 64
                f.write(b"\0" * pad)
                offset += pad
                layout[name] = {"dtype": a.dtype.str, "count": int(a.size), "offset": offset}
                f.write(a.tobytes())
                offset += a.nbytes
        (folder / "meta.json").write_text(json.dumps({**self.meta, "arrays": layout}))

    @classmethod
    def load(cls, folder: Path) -> SampleIndex:
        """Views on one read-only memory map of index.bin: one descriptor, pages shared between processes."""
        meta = json.loads((folder / "meta.json").read_text())
        layout = meta.pop("arrays")
        with open(folder / "index.bin", "rb") as f:
            size = os.fstat(f.fileno()).st_size
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        arrays = {}
        for name in cls.ARRAYS:
            spec = layout[name]
            arrays[name] = np.frombuffer(buf, dtype=np.dtype(spec["dtype"]), count=spec["count"], offset=spec["offset"])
        return cls(arrays, meta, buf if size else None)


def _cache_key(tars: list) -> str:
    """Changes whenever a shard or its index changes: manifest checksums where listed, else size and time."""
    listed: dict[str, str] = {}
    for folder in {storage.parent(t) for t in tars}:
        try:
            manifest = json.loads(storage.read_bytes(storage.join(folder, "manifest.json")))
            listed.update({str(storage.join(folder, s["file"])): s["sha256"] for s in manifest.get("shards", [])})
        except (OSError, ValueError, KeyError, TypeError):
            pass
    h = hashlib.sha256(f"v{INDEX_VERSION}".encode())
    for tar in tars:
        parts = [str(tar), listed.get(str(tar), "")]
        if isinstance(tar, Path):  # local files: also their sizes and times (edits the manifest misses)
            idx = index_path(tar)
            st, si = tar.stat(), idx.stat() if idx.is_file() else None
            parts += [str(st.st_size), str(st.st_mtime_ns), str(si.st_size if si else -1),
                      str(si.st_mtime_ns if si else -1)]
        elif not parts[1]:  # a remote shard the manifest does not list: its size
            parts.append(str(storage.size_of(tar)))
        h.update(("|".join(parts) + "\n").encode())
    return h.hexdigest()[:32]


def _cache_folder(tars: list, split: str | None) -> Path:
    """DIR/.index/ beside local shards when writable, else the user's cache directory (always for URLs)."""
    key = _cache_key(tars)
    folders = {str(storage.parent(t)) for t in tars}
    name = f"{split or 'all'}-{key}" if len(folders) == 1 else f"list-{key}"
    if isinstance(tars[0], Path):
        home = tars[0].parent / INDEX_DIR
        if os.access(tars[0].parent, os.W_OK) or home.is_dir() and os.access(home, os.W_OK):
            return home / name
        where = str(tars[0].parent.resolve())
    else:
        where = str(storage.parent(tars[0]))
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tpn-toolkit" / "index"
    return base / hashlib.sha256(where.encode()).hexdigest()[:16] / name


def load_index(tars: list, split: str | None = None, cache: bool = True) -> SampleIndex:
    """The compact index of `tars`: memory-mapped from the cache, or built (and cached atomically)."""
    folder = _cache_folder(tars, split) if cache else None
    if folder is not None and (folder / "meta.json").is_file():
        try:
            return SampleIndex.load(folder)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    index = build_index(tars)
    if folder is None:
        return index
    tmp = temp_path(folder)
    try:
        index.save(tmp)
        os.replace(tmp, folder)  # one writer wins; the others' identical copies are dropped
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "meta.json").is_file():
            return index  # read-only place: use the in-memory index
    return SampleIndex.load(folder)


def build_index(tars: list) -> SampleIndex:
    """Build the arrays from the `.idx` files, reading each sample's small members once."""
    cols: dict[str, list] = {name: [] for name in SampleIndex.ARRAYS if name not in ("key_bytes",)}
    keys = bytearray()
    cols["key_start"].append(0)
    cols["frame_start"].append(0)
    kinds: set[tuple[str, str]] = set()
    reader = open_reader(tars, max_open=4)
    try:
        for number, tar in enumerate(tars):
            entries = read_index(index_path(tar), tar)
            _check_not_truncated(tar, entries)
            small = _small_members(reader, number, tar, entries)
            for entry, members in zip(entries, small):
                kinds.add(_add_sample(cols, keys, number, tar, entry, members))
    finally:
        reader.close()
    if not cols["shard"]:
        raise ShardReadError(f"the shards {[str(t) for t in tars]} hold no samples")
    if len(kinds) > 1:
        raise ShardReadError(f"the shards mix sample formats {sorted(k[1] for k in kinds)}: re-shard them with one --codec")
    kind, ext = kinds.pop()
    codec = "jpeg" if kind == "frames" else VIDEO_EXTS[ext]
    dtypes = {"shard": np.uint32, "label": np.int32, "frames": np.int32, "width": np.uint16, "height": np.uint16,
              "fps": np.float32, "video_size": np.int32, "json_size": np.int32, "frame_size": np.int32}
    arrays = {name: np.asarray(v, dtype=dtypes.get(name, np.int64)) for name, v in cols.items()}
    arrays["key_bytes"] = np.frombuffer(bytes(keys), dtype=np.uint8)
    return SampleIndex(arrays, {"kind": kind, "codec": codec, "ext": ext, "version": INDEX_VERSION})


def _add_sample(cols: dict, keys: bytearray, number: int, tar, entry: dict, members: tuple) -> tuple[str, str]:
    name = next(iter(entry.values()))[2]
    key = key_of(name)
    frames = sorted((int(m.group(1)), v) for ext, v in entry.items() if (m := FRAME_RE.match(ext)))
    videos = [ext for ext in VIDEO_EXTS if ext in entry]
    problem = ""
    if missing := [ext for ext in REQUIRED if ext not in entry]:
        problem = "missing " + ", ".join("." + m for m in missing)
    elif len(videos) + bool(frames) != 1:
        problem = "needs exactly one .webm or .mp4 video, or numbered .NNNNNN.jpg frames"
    elif frames and [i for i, _ in frames] != list(range(len(frames))):
        problem = "its .NNNNNN.jpg frames are not numbered 0, 1, 2, ... without gaps"
    if problem:
        raise ShardReadError(f"shard {tar}, sample {key!r}: {problem} (has {sorted(entry)[:8]}); "
                         "re-create the shard with `python -m pipeline.shard`")
    label, count, meta = _parse_small(tar, key, members)
    kb = key.encode("utf-8")
    keys += kb
    cols["key_start"].append(len(keys))
    cols["shard"].append(number)
    cols["label"].append(label)
    cols["frames"].append(count)
    cols["width"].append(meta["width"])
    cols["height"].append(meta["height"])
    cols["fps"].append(meta["fps"])
    cols["json_off"].append(entry["json"][0])
    cols["json_size"].append(entry["json"][1])
    if frames:
        cols["video_off"].append(-1)
        cols["video_size"].append(-1)
        cols["frame_off"] += [v[0] for _, v in frames]
        cols["frame_size"] += [v[1] for _, v in frames]
        cols["frame_start"].append(len(cols["frame_off"]))
        return "frames", "jpg"
    cols["video_off"].append(entry[videos[0]][0])
    cols["video_size"].append(entry[videos[0]][1])
    cols["frame_start"].append(len(cols["frame_off"]))
    return "video", videos[0]


def _small_members(reader, number: int, tar, entries: list[dict]) -> list[tuple]:
    """Every sample's (lbl, frames, json) bytes, one read per sample (the three members lie together)."""
    spans = []
    for entry in entries:
        if any(ext not in entry for ext in REQUIRED):
            spans.append(None)  # reported by _add_sample
            continue
        start = min(entry[ext][0] for ext in REQUIRED)
        spans.append((start, max(entry[ext][0] + entry[ext][1] for ext in REQUIRED)))
    requests = [(number, a, b - a) for a, b in filter(None, spans)]
    blocks = iter(reader.read_many(requests))
    out = []
    for entry, span in zip(entries, spans):
        if span is None:
            out.append(None)
            continue
        block = next(blocks)
        out.append(tuple(block[entry[ext][0] - span[0] : entry[ext][0] - span[0] + entry[ext][1]] for ext in REQUIRED))
    return out


def _parse_small(tar, key: str, members: tuple) -> tuple[int, int, dict]:
    """(label, frame count, geometry) from a sample's lbl, frames and json bytes."""
    where = f"shard {tar}, sample {key!r}"
    try:
        label = int(np.frombuffer(members[0], dtype="<i4")[0])
        count = int(np.frombuffer(members[1], dtype="<i4")[0])
        meta = json.loads(members[2])
        info = {"width": int(meta["width"]), "height": int(meta["height"]), "fps": float(meta.get("fps") or 0.0)}
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise ShardReadError(f"{where}: unreadable .lbl, .frames or .json ({err}); "
                         + VERIFY_HINT.format(dir=storage.parent(tar))) from None
    if count < 1:
        raise ShardReadError(f"{where}: its .frames says {count} frames; " + VERIFY_HINT.format(dir=storage.parent(tar)))
    return label, count, info


def open_reader(tars: list, max_open: int | None = None):
    """A byte-range reader for the shards: bounded local descriptors, or concurrent remote requests."""
    if tars and not isinstance(tars[0], Path):
        return storage.RemoteReader(tars)
    return FilePool(tars, max_open)


def _check_not_truncated(tar, entries: list[dict[str, tuple[int, int, str]]]) -> None:
    end = max((o + s for entry in entries for o, s, _ in entry.values()), default=0)
    size = storage.size_of(tar)
    if size < end:
        raise ShardReadError(
            f"shard {tar} is truncated: {size} bytes but its index needs {end}; "
            + VERIFY_HINT.format(dir=storage.parent(tar))
        )


# ----------------------------------------------------------------------------- the shard set


class ShardSet:
    """All samples of a list of shards, in shard order then tar order; reads members by offset.

    Use as a context manager, or call `close()`, to release the open shard
    files and the index's memory map early (a closed set cannot be read
    again); they are released when the object is collected in any case.
    """

    def __init__(self, tars: list, index: SampleIndex, classes: list[str], max_open: int | None = None):
        self.tars = tars  # Paths, or URLs (str) for remote shards
        self.index = index
        self.kind: str = index.meta["kind"]  # "video" | "frames"
        self.codec: str = index.meta["codec"]  # "vp9" | "h264" | "jpeg"
        self.video_ext: str = index.meta["ext"]
        self.classes = classes
        self.files = open_reader(tars, max_open)
        self.closed = False

    @classmethod
    def open(cls, shards: str | Path | Sequence[str | Path], split: str | None = None, *,
             max_open: int | None = None, cache: bool = True) -> ShardSet:
        tars = find_shards(shards, split)
        classes = classes_of_shards(tars)
        return cls(tars, load_index(tars, split, cache), classes, max_open)

    def __len__(self) -> int:
        return len(self.index)

    def __enter__(self) -> ShardSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        files = getattr(self, "files", None)
        if files is not None:
            files.close()

    def close(self) -> None:
        self.files.close()
        self.index.release()
        self.closed = True

    @property
    def is_frames(self) -> bool:
        return self.kind == "frames"

    def read(self, index: int, offset: int, size: int, what: str) -> bytes:
        return self.read_many([(index, offset, size, what)])[0]

    def read_many(self, requests: Sequence[tuple[int, int, int, str]]) -> list[bytes]:
        """[(sample index, offset, size, what)] -> bytes; remote shards fetch them concurrently."""
        try:
            blobs = self.files.read_many([(int(self.index.shard[i]), o, s) for i, o, s, _ in requests])
        except OSError as err:
            i, _, _, what = requests[0]
            raise type(err)(f"{err} (reading {what} of {self.where(i)}, in a batch of {len(requests)} reads)") from err
        for (i, _, size, what), data in zip(requests, blobs):
            if len(data) != size:
                raise ShardReadError(
                    f"{self.where(i)}: {what} ends past the end of the file (truncated shard); "
                    + VERIFY_HINT.format(dir=self.folder(i))
                )
        return blobs

    def member(self, index: int, name: str) -> bytes:
        """Bytes of one member: "video", "meta" (the json), "lbl" or "frames"."""
        ix = self.index
        if name == "video":
            return self.read_many([self._video_request(index)])[0]
        if name == "meta":
            return self.read(index, int(ix.json_off[index]), int(ix.json_size[index]), "member .json")
        if name == "lbl":
            return np.array([ix.label[index]], "<i4").tobytes()
        if name == "frames":
            return np.array([ix.frames[index]], "<i4").tobytes()
        raise ValueError(f"unknown member {name!r}: use video, meta, lbl or frames")

    def frame_bytes(self, index: int, frames: Sequence[int]) -> list[bytes]:
        """The stored JPEGs of frames `frames` of a frame-shard sample (only those bytes are read)."""
        return self.frame_bytes_many([(index, frames)])[0]

    def frame_bytes_many(self, wanted: Sequence[tuple[int, Sequence[int]]]) -> list[list[bytes]]:
        """[(sample, frames)] -> per sample its frames' JPEGs, read in one batch of requests."""
        ix = self.index
        requests = []
        for index, frames in wanted:
            start, stop = int(ix.frame_start[index]), int(ix.frame_start[index + 1])
            for f in frames:
                if not 0 <= f < stop - start:
                    raise ShardReadError(f"{self.where(index)}: frame {f} asked, the sample stores {stop - start}")
                j = start + int(f)
                requests.append((index, int(ix.frame_off[j]), int(ix.frame_size[j]), f"frame {int(f)}"))
        blobs = iter(self.read_many(requests))
        return [[next(blobs) for _ in frames] for _, frames in wanted]

    def videos(self, indices: Sequence[int]) -> list[np.ndarray]:
        """The encoded videos of several samples, read in one batch of requests."""
        blobs = self.read_many([self._video_request(i) for i in indices])
        return [np.frombuffer(b, dtype=np.uint8) for b in blobs]

    def _video_request(self, index: int) -> tuple[int, int, int, str]:
        if self.is_frames:
            raise ShardReadError(f"{self.where(index)} is a frame-shard sample: read its frames with frame_bytes")
        return index, int(self.index.video_off[index]), int(self.index.video_size[index]), "member .video"

    def video(self, index: int) -> np.ndarray:
        return self.videos([index])[0]

    def label(self, index: int) -> int:
        return int(self.index.label[index])

    def frame_count(self, index: int) -> int:
        return int(self.index.frames[index])

    def frame_size(self, index: int) -> tuple[int, int]:
        """(height, width) of the stored frames."""
        return int(self.index.height[index]), int(self.index.width[index])

    def meta(self, index: int) -> dict:
        return json.loads(self.member(index, "meta"))

    def key(self, index: int) -> str:
        return self.index.key(index)

    def folder(self, index: int):
        return storage.parent(self.tars[int(self.index.shard[index])])

    def where(self, index: int) -> str:
        """'shard file, sample key' for error messages."""
        return f"shard {self.tars[int(self.index.shard[index])]}, sample {self.key(index)!r}"


def parse_classes(data: bytes | str, where: str) -> list[str]:
    """A classes.json body (JSON list of distinct names in label order), validated; `where` names it in errors."""
    try:
        classes = json.loads(data)
    except ValueError as err:
        raise ShardReadError(f"{where} is not valid JSON ({err}); re-create it with `python -m pipeline.shard`") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
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
