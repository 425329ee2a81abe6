"""The JPEG frames of frame shards: check that one is a complete image that decodes.

`pipeline.shard` checks a frame folder's JPEGs before storing them as they
are, `pipeline.verify` every stored frame, and the DALI frame backend names
the frame a batch failed on.
"""

from __future__ import annotations

import io
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


# END
