"""`SampleIndex`: every per-sample number of a list of shards in flat numpy arrays, cached and memory-mapped.

Built once from the `.idx` files (plus one small read per sample for label,
frame count and size) and cached as one file in `DIR/.index/`, keyed by
the shards' checksums in the manifest (or their sizes and times); later
opens memory-map it (one file), so opening millions of samples takes
milliseconds and processes on one machine share the pages.

Every sample has `<key>.lbl` (int32 LE label), `<key>.frames` (int32 LE
frame count) and `<key>.json` (key, class, label, frames, fps, width,
height, ...), and either one video (`<key>.webm` VP9 or `<key>.mp4` H.264:
video shards) or one JPEG per frame (`<key>.000000.jpg`, ...: frame shards).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
from pathlib import Path

import numpy as np

from pipeline.errors import VERIFY_HINT, ShardReadError
from pipeline.format.index import index_path, read_index
from pipeline.format.members import FRAME_RE, REQUIRED, VIDEO_EXTS, parse_int32, split_name
from pipeline.io import storage
from pipeline.io.filepool import open_reader
from pipeline.io.files import temp_path

INDEX_DIR = ".index"
INDEX_VERSION = 3


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

    ARRAYS = (
        "shard",
        "label",
        "frames",
        "width",
        "height",
        "fps",
        "video_off",
        "video_size",
        "json_off",
        "json_size",
        "key_start",
        "key_bytes",
        "frame_start",
        "frame_off",
        "frame_size",
    )

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


def _cache_key(tars: list, listed: dict[str, str]) -> str:
    """Changes whenever a shard or its index changes: the checksums its manifest lists (`listed`, str(tar) ->
    sha256), else its size and time."""
    h = hashlib.sha256(f"v{INDEX_VERSION}".encode())
    for tar in tars:
        parts = [str(tar), listed.get(str(tar), "")]
        if isinstance(tar, Path):  # local files: also their sizes and times (edits the manifest misses)
            idx = index_path(tar)
            st, si = tar.stat(), idx.stat() if idx.is_file() else None
            parts += [
                str(st.st_size),
                str(st.st_mtime_ns),
                str(si.st_size if si else -1),
                str(si.st_mtime_ns if si else -1),
            ]
        elif not parts[1]:  # a remote shard the manifest does not list: its size
            parts.append(str(storage.size_of(tar)))
        h.update(("|".join(parts) + "\n").encode())
    return h.hexdigest()[:32]


def _cache_folder(tars: list, split: str | None, checksums: dict[str, str]) -> Path:
    """DIR/.index/ beside local shards when writable, else the user's cache directory (always for URLs)."""
    key = _cache_key(tars, checksums)
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


def load_index(
    tars: list, split: str | None = None, cache: bool = True, checksums: dict[str, str] | None = None
) -> SampleIndex:
    """The compact index of `tars`: memory-mapped from the cache, or built (and cached atomically).

    `checksums` (str(tar) -> sha256, as `pipeline.format.discovery.locate_shards` reads them from the
    manifests) key the cache; shards without one are keyed by their size and time.
    """
    folder = _cache_folder(tars, split, checksums or {}) if cache else None
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
        raise ShardReadError(
            f"the shards mix sample formats {sorted(k[1] for k in kinds)}: re-shard them with one --codec"
        )
    kind, ext = kinds.pop()
    codec = "jpeg" if kind == "frames" else VIDEO_EXTS[ext]
    dtypes = {
        "shard": np.uint32,
        "label": np.int32,
        "frames": np.int32,
        "width": np.uint16,
        "height": np.uint16,
        "fps": np.float32,
        "video_size": np.int32,
        "json_size": np.int32,
        "frame_size": np.int32,
    }
    arrays = {name: np.asarray(v, dtype=dtypes.get(name, np.int64)) for name, v in cols.items()}
    arrays["key_bytes"] = np.frombuffer(bytes(keys), dtype=np.uint8)
    return SampleIndex(arrays, {"kind": kind, "codec": codec, "ext": ext, "version": INDEX_VERSION})


def _add_sample(cols: dict, keys: bytearray, number: int, tar, entry: dict, members: tuple) -> tuple[str, str]:
    name = next(iter(entry.values()))[2]
    key, _ = split_name(name)
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
        raise ShardReadError(
            f"shard {tar}, sample {key!r}: {problem} (has {sorted(entry)[:8]}); "
            "re-create the shard with `python -m pipeline.shard`"
        )
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
        label, count = parse_int32(members[0]), parse_int32(members[1])
        meta = json.loads(members[2])
        info = {"width": int(meta["width"]), "height": int(meta["height"]), "fps": float(meta.get("fps") or 0.0)}
    except (ValueError, IndexError, KeyError, TypeError) as err:
        raise ShardReadError(
            f"{where}: unreadable .lbl, .frames or .json ({err}); " + VERIFY_HINT.format(dir=storage.parent(tar))
        ) from None
    if count < 1:
        raise ShardReadError(
            f"{where}: its .frames says {count} frames; " + VERIFY_HINT.format(dir=storage.parent(tar))
        )
    return label, count, info


def _check_not_truncated(tar, entries: list[dict[str, tuple[int, int, str]]]) -> None:
    end = max((o + s for entry in entries for o, s, _ in entry.values()), default=0)
    size = storage.size_of(tar)
    if size < end:
        raise ShardReadError(
            f"shard {tar} is truncated: {size} bytes but its index needs {end}; "
            + VERIFY_HINT.format(dir=storage.parent(tar))
        )
