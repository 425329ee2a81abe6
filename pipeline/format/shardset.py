"""`ShardSet`: the samples of WebDataset tar shards, read by offset through their compact index.

The loader reads a sample's members straight out of the tar by offset, so
any sample can be fetched in any order: that is what lets an epoch be a pure
permutation and a resume start at any batch. The parts, one concern each:
`pipeline.format.discovery` (which tars), `pipeline.format.index` (their `.idx`
files), `pipeline.format.sample_index` (the cached per-sample arrays),
`pipeline.io.filepool` (bounded open files, remote range reads) and
`pipeline.format.classes` (`classes.json`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.io import storage
from pipeline.format.classes import classes_of_shards
from pipeline.format.discovery import locate_shards
from pipeline.errors import VERIFY_HINT, ShardReadError
from pipeline.io.filepool import open_reader
from pipeline.format.members import pack_int32
from pipeline.format.sample_index import SampleIndex, load_index


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
    def open(
        cls,
        shards: str | Path | Sequence[str | Path],
        split: str | None = None,
        *,
        max_open: int | None = None,
        cache: bool = True,
    ) -> ShardSet:
        found = locate_shards(shards, split)
        classes = classes_of_shards(found.tars)
        return cls(found.tars, load_index(found.tars, split, cache, found.checksums), classes, max_open)

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
            return pack_int32(int(ix.label[index]))
        if name == "frames":
            return pack_int32(int(ix.frames[index]))
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
