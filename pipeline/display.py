"""How a source video is shown (its pixels' aspect ratio and display rotation, and the displayed size that
follows), and how much of it decodes: the rules `pipeline.shard` and `export.predict` share.

A camera may store non-square pixels (a sample aspect ratio, SAR) and a
phone a display rotation (a display matrix: the frames are stored sideways
and shown turned). The SAR applies to the stored frame, before the
rotation. `pipeline.shard` shows every video as a player would: ffmpeg
turns the frames upright (its autorotation), then the stored width is
stretched to square pixels, which after a quarter turn is the height
(`shard.ffmpeg.sar_filter`); `export.predict` does the same to a video it
classifies (`upright`), so a model sees a clip shaped as in training.
Flips in a display matrix are not followed (players rarely write them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Display:
    """A source video's display geometry: `sar` when its pixels are not square, `rotation` the quarter turns
    counter-clockwise that show it upright, in degrees (0, 90, 180 or 270)."""

    sar: tuple[int, int] | None = None
    rotation: int = 0

    @property
    def sideways(self) -> bool:
        """A quarter turn: the displayed width is the stored height."""
        return self.rotation in (90, 270)

    def stretched_width(self, width: int) -> int:
        """A stored frame's width once its pixels are square (even, as `shard.ffmpeg.sar_filter`)."""
        return display_width(width, self.sar)

    def size(self, width: int, height: int) -> tuple[int, int]:
        """The (W, H) a `width` x `height` stored frame is shown at: stretched to square pixels, then turned."""
        width = self.stretched_width(width)
        return (height, width) if self.sideways else (width, height)


def display_width(width: int, sar: tuple[int, int] | None) -> int:
    """The width a `width`-pixel-wide stored frame is shown at with sample aspect ratio `sar` (even, as
    ffmpeg's `trunc(iw * sar / 2) * 2`); square or unknown pixels keep it."""
    if not sar or sar[0] == sar[1]:
        return width
    return max(2, int(width * sar[0] / sar[1] / 2) * 2)


def source_display(path: str | os.PathLike) -> Display:
    """A source video's SAR (None: square, unknown or unreadable: ffmpeg then says what is wrong with the
    file) and display rotation (from its first frame's display matrix, as ffmpeg's autorotation reads it)."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
            first = next(container.decode(stream), None)
    except (av.FFmpegError, IndexError, OSError):
        return Display()
    rotation = quarter_turns(getattr(first, "rotation", 0) or 0) * 90 if first is not None else 0
    if not sar or sar.numerator <= 0 or sar.denominator <= 0 or sar.numerator == sar.denominator:
        return Display(None, rotation)
    return Display((sar.numerator, sar.denominator), rotation)


# How much of a source decodes: a download cut mid-way still claims its whole duration in its header.
PARTIAL_FRACTION = 0.9  # fewer decoded frames than this share of the claimed ones: partly decodable


def is_partial(decoded: int, claimed: int | None) -> bool:
    """Decoded far fewer frames than the container claims (its duration x frame rate): a cut download."""
    return claimed is not None and decoded < PARTIAL_FRACTION * claimed and claimed - decoded >= 2


def partial_words(decoded: int, claimed: int) -> str:
    """How `pipeline.shard`, `pipeline.verify` and `export.predict` all say it."""
    return f"only {decoded} of its {claimed} frames decode (a cut or damaged file)"


def quarter_turns(degrees: float) -> int:
    """Counter-clockwise degrees -> quarter turns 0..3 (-90 is 3; angles between round to the nearest)."""
    return round(degrees / 90) % 4
