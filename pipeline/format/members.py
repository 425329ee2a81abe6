"""The members of a sample, and the rules every reader and writer of shards shares.

A sample is consecutive tar members `<key>.<ext>`, the extension starting at
the key's first dot (as DALI and `webdataset` split them):

| member | holds |
|---|---|
| `<key>.lbl` | the label: 4-byte little-endian int32 |
| `<key>.frames` | the frame count: 4-byte little-endian int32 |
| `<key>.json` | key, class, label, frames, fps, width, height, source, codec, sha256, ... |
| `<key>.webm` / `<key>.mp4` | the video (video shards: VP9 / H.264) |
| `<key>.000000.jpg`, ... | one JPEG per frame, numbered from 0 (frame shards) |

The `.json`'s sha256 is of the video, or of the frames concatenated in order.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable

VIDEO_EXTS = {"webm": "vp9", "mp4": "h264"}  # video member -> codec
REQUIRED = ("lbl", "frames", "json")  # every sample has these, next to each other
FRAME_RE = re.compile(r"^(\d{6})\.jpg$")
_INT32 = struct.Struct("<i")


def split_name(name: str) -> tuple[str, str]:
    """'dir/key.a.b' -> ('dir/key', 'a.b'): the extension starts at the first dot of the base name."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def check_key(key: str) -> None:
    """Keys become tar member names: ASCII, no dots, no slashes, short enough for a USTAR header."""
    if not key or "." in key or "/" in key or not key.isascii() or len(key) > 80 or key.startswith("-"):
        raise ValueError(f"invalid sample key {key!r}: need 1-80 ASCII chars without '.' or '/'")


def frame_ext(index: int) -> str:
    """Extension of frame `index` in a frame shard: '000042.jpg'."""
    return f"{index:06d}.jpg"


def frame_exts(count: int) -> list[str]:
    return [frame_ext(i) for i in range(count)]


def pack_int32(value: int) -> bytes:
    """A `.lbl` or `.frames` member's bytes."""
    return _INT32.pack(value)


def parse_int32(data: bytes | memoryview) -> int:
    """A `.lbl` or `.frames` member's value; ValueError unless it is exactly 4 bytes."""
    if len(data) != _INT32.size:
        raise ValueError(f"{len(data)} bytes where a 4-byte int32 belongs")
    return _INT32.unpack(data)[0]


def frames_sha256(images: Iterable[bytes]) -> str:
    """The checksum a frame sample's `.json` records: of its JPEGs concatenated in frame order."""
    h = hashlib.sha256()
    for image in images:
        h.update(image)
    return h.hexdigest()
