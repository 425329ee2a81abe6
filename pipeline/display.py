"""How a source video is shown: its pixels' aspect ratio, and the displayed size that follows.

`pipeline.shard` stretches non-square pixels to the display aspect ratio
before every geometry rule (ffmpeg's filters), and `export.predict` does the
same to a video it classifies, so a model sees a clip shaped as in training.
"""

from __future__ import annotations

import os


def display_width(width: int, sar: tuple[int, int] | None) -> int:
    """The width a `width`-pixel-wide frame is shown at with sample aspect ratio `sar` (even, as ffmpeg's
    `trunc(iw * sar / 2) * 2` of `sar_filter`); square or unknown pixels keep it."""
    if not sar or sar[0] == sar[1]:
        return width
    return max(2, int(width * sar[0] / sar[1] / 2) * 2)


def source_sar(path: str | os.PathLike) -> tuple[int, int] | None:
    """A source video's sample aspect ratio when its pixels are not square (None: square, unknown or unreadable:
    ffmpeg then says what is wrong with the file)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
    except (av.FFmpegError, IndexError, OSError):
        return None
    if not sar or sar.numerator <= 0 or sar.denominator <= 0 or sar.numerator == sar.denominator:
        return None
    return sar.numerator, sar.denominator
