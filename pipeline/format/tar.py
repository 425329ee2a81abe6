"""WebDataset tar shards with DALI index files, written atomically.

A shard is written to a hidden temporary name next to its final name, then
fsync'ed and renamed, so a kill at any moment leaves either nothing or a
complete file under the final name. The `.idx` (DALI's `wds2idx` format:
`v1.2 N`, then per sample `ext offset size name ...`) is computed from the
offsets we write, renamed into place before the tar, so a final `.tar` always
has its index beside it.

Tar headers are fixed (mtime 0, uid/gid 0, no user names, USTAR), so the
same samples give byte-identical shards.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.format.index import format_index
from pipeline.format.members import check_key, split_name
from pipeline.io.files import atomic_write_text, fsync_dir, sha256_file, temp_path

BLOCK = tarfile.BLOCKSIZE  # 512


def tar_file_size(content: int) -> int:
    """Final size of a tar whose members take `content` bytes: end blocks, then padding to a full record."""
    return -(-(content + 2 * BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


@dataclass
class ShardInfo:
    """A finished shard: what the manifest records about it."""

    file: str
    index: str
    samples: int
    bytes: int
    sha256: str


class ShardWriter:
    """Write one tar shard + `.idx`; nothing appears under the final names until `close()`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.idx_path = self.path.with_suffix(".idx")
        self._tmp = temp_path(self.path)
        self._file = open(self._tmp, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self._index: list[list[tuple[str, int, int, str]]] = []
        self.keys: list[str] = []

    @property
    def size(self) -> int:
        """Bytes written so far (before the end-of-archive blocks)."""
        return self._file.tell()

    def add(self, key: str, components: dict[str, bytes]) -> None:
        """Append one sample; `components` maps extension (no dot) -> bytes, in tar order."""
        check_key(key)
        entry = []
        for ext, data in components.items():
            name = f"{key}.{ext}"
            header_at = self._file.tell()
            self._tar.addfile(tarinfo(name, len(data)), io.BytesIO(data))
            # One 512-byte USTAR header per member: the data follows it directly.
            assert self._file.tell() == header_at + BLOCK + -(-len(data) // BLOCK) * BLOCK
            entry.append((ext, header_at + BLOCK, len(data), name))
        self._index.append(entry)
        self.keys.append(key)

    def close(self) -> ShardInfo:
        """Finish the archive, fsync, rename idx then tar into place; return its record."""
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        atomic_write_text(self.idx_path, format_index(self._index))
        os.replace(self._tmp, self.path)
        fsync_dir(self.path.parent)
        return ShardInfo(
            file=self.path.name,
            index=self.idx_path.name,
            samples=len(self.keys),
            bytes=self.path.stat().st_size,
            sha256=sha256_file(self.path),
        )

    def abort(self) -> None:
        """Drop the partial shard (used on errors; a kill leaves only the hidden temp file)."""
        try:
            self._tar.close()
            self._file.close()
        finally:
            self._tmp.unlink(missing_ok=True)


def index_of_tar(path: Path) -> str:
    """The DALI index of an existing tar, computed independently of the writer (for verify)."""
    samples: list[list[tuple[str, int, int, str]]] = []
    last = None
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            base, ext = split_name(member.name)
            if not base or base.endswith("/"):
                continue
            if base != last:
                samples.append([])
                last = base
            samples[-1].append((ext, member.offset_data, member.size, member.name))
    return format_index(samples)


def iter_samples(path: Path) -> Iterator[dict[str, bytes | str]]:
    """Samples of a tar in order, as {'__key__': key, ext: bytes, ...} (consecutive members grouped)."""
    current: dict[str, bytes | str] | None = None
    with tarfile.open(path, mode="r:") as tar:
        for member in tar:
            if not member.isreg():
                continue
            base, ext = split_name(member.name)
            if current is None or current["__key__"] != base:
                if current is not None:
                    yield current
                current = {"__key__": base}
            fobj = tar.extractfile(member)
            current[ext] = fobj.read() if fobj else b""
    if current is not None:
        yield current
