"""Shards packed from ready-made sample fragments, by whoever runs the encodes.

A sample's tar members (512-byte USTAR header, data, padding to 512 bytes)
do not depend on where in a shard they land: the worker that encodes a video
also writes its sample's members as one *fragment* file, and records where
each member's data starts in it. A shard is then its fragments concatenated,
plus the end-of-archive blocks, and its `.idx` is the fragments' member
tables shifted by where each fragment starts. So the process that decides
shard membership (`pipeline.shard.core`) touches no sample byte: it adds up
fragment sizes, and hands each finished shard's list to a worker
(`pack_shard`), which writes the tar and its index atomically (index first,
as `format.tar.ShardWriter` does) and returns the shard's size and sha256.

The bytes are those `format.tar.ShardWriter` writes for the same samples
(the headers come from the same `tarfile` code; the recorded digests in
`tests/fixtures/golden` hold both to the same files).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.format.index import format_index
from pipeline.format.members import check_key
from pipeline.format.tar import BLOCK, ShardInfo, tar_file_size, tarinfo
from pipeline.io import storage
from pipeline.io.files import atomic_write_text, fsync_dir, temp_path

CHUNK = 1 << 22


@dataclass(frozen=True)
class Fragment:
    """A staged sample fragment: where it is (a path, or a URL), its size, its sample's key, and per member
    (ext, where its data starts in the fragment, data size); None: read from the fragment's staged record
    (`<key>.json` beside it), so that the coordinator never carries a table that grows with a video's
    frame count."""

    location: str
    bytes: int
    key: str
    members: tuple[tuple[str, int, int], ...] | None = None

    def member_table(self) -> tuple[tuple[str, int, int], ...]:
        if self.members is not None:
            return self.members
        record = self.location[: -len(".frag")] + ".json"
        return tuple(tuple(m) for m in json.loads(storage.read_bytes(record))["members"])


def fragment_bytes(components: dict[str, bytes]) -> int:
    """Bytes a sample adds to a tar: a 512-byte header per member plus padded data."""
    return sum(BLOCK + -(-len(d) // BLOCK) * BLOCK for d in components.values())


def write_fragment(path: Path, key: str, components: dict[str, bytes]) -> tuple[list[tuple[str, int, int]], str]:
    """Write `key`'s members (ext -> bytes, in tar order) to `path` as tar blocks; return the member table
    and the fragment's sha256. Written to a temp name, then renamed."""
    check_key(key)
    members, h, offset = [], hashlib.sha256(), 0
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            for ext, data in components.items():
                header = tarinfo(f"{key}.{ext}", len(data)).tobuf(
                    tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"
                )
                pad = b"\0" * (-len(data) % BLOCK)
                for block in (header, data, pad):
                    f.write(block)
                    h.update(block)
                members.append((ext, offset + BLOCK, len(data)))
                offset += BLOCK + len(data) + len(pad)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return members, h.hexdigest()


def shard_index(fragments: list[Fragment]) -> str:
    """The shard's `.idx` text: every fragment's members at their offsets in the shard."""
    samples, start = [], 0
    for frag in fragments:
        samples.append([(ext, start + at, size, f"{frag.key}.{ext}") for ext, at, size in frag.member_table()])
        start += frag.bytes
    return format_index(samples)


def pack_shard(dest: str, fragments: list[Fragment]) -> ShardInfo:
    """Write the shard `dest` (a path, or a URL) of `fragments` in order, and its `.idx`; return its record.

    Local: a temp name, fsync, the index renamed into place, then the tar.
    A URL: made in a local temp folder, then uploaded index first; an object
    store shows an object only once its upload is complete. Either way no
    partial shard ever has the final name.
    """
    name = storage.name_of(dest)
    index_name = name[: -len(".tar")] + ".idx"
    if storage.is_remote(dest):
        with tempfile.TemporaryDirectory(prefix="tpn-pack-") as folder:
            info = pack_shard(str(Path(folder) / name), fragments)
            for local in (index_name, name):
                storage.upload(Path(folder) / local, str(storage.join(storage.parent(dest), local)))
            return info
    path = Path(dest)
    tmp = temp_path(path)
    h, written = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for frag in fragments:
                written += _append(out, frag, h)
            end = b"\0" * (tar_file_size(written) - written)  # two end blocks, then padding to a full record
            out.write(end)
            h.update(end)
            out.flush()
            os.fsync(out.fileno())
        atomic_write_text(path.with_suffix(".idx"), shard_index(fragments))
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
    size = written + len(end)
    return ShardInfo(file=name, index=index_name, samples=len(fragments), bytes=size, sha256=h.hexdigest())


def _append(out, frag: Fragment, h) -> int:
    """Copy one fragment into the open shard, hashing it on the way; its size, checked."""
    copied = 0
    with _open(frag.location) as src:
        while chunk := src.read(CHUNK):
            out.write(chunk)
            h.update(chunk)
            copied += len(chunk)
    if copied != frag.bytes:
        raise OSError(
            f"fragment {frag.location} holds {copied} bytes, {frag.bytes} were recorded: re-run to re-encode it"
        )
    return copied


def _open(location: str):
    if storage.is_remote(location):
        fs, path = storage.filesystem(location)
        return fs.open(path, "rb")
    try:
        return open(location, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"the staged fragment {location} is not there on {socket.gethostname()}: removed under the run, or, "
            "with --engine ray, --out is not a folder every node sees (use a shared filesystem or a URL); rerun"
        ) from None
