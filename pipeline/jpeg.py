"""JPEG frames of frame shards: read them out of ffmpeg's MJPEG output, check that they decode.

`pipeline.shard --codec jpeg` has ffmpeg (the same filters as for the video
codecs) write the frames as MJPEG in Matroska: every packet is one complete
baseline JPEG, and the container keeps the frame rate. Those packets become
the shard's per-frame members, unchanged.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass


class JpegError(ValueError):
    """Bytes that are not a complete, decodable JPEG image."""


@dataclass(frozen=True)
class JpegInfo:
    width: int
    height: int
    progressive: bool


def decode_check(data: bytes | memoryview) -> JpegInfo:
    """Fully decode one JPEG with libjpeg(-turbo) through Pillow; its geometry, or `JpegError`."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise JpegError(f"not a JPEG image ({image.format})")
            image.load()  # Pillow refuses truncated data unless told otherwise
            return JpegInfo(image.size[0], image.size[1], bool(image.info.get("progressive")))
    except JpegError:
        raise
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... for bad data
        raise JpegError(f"does not decode: {err}") from None


def mjpeg_packets(path: str | os.PathLike) -> list[bytes]:
    """The JPEG images of an MJPEG stream we encoded, in presentation order (one per packet)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [bytes(p) for p in container.demux(stream) if p.size > 0]
