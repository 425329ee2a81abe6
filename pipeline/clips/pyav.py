"""Frame-accurate decoding of a few frames of a constant-frame-rate video with PyAV.

Seek to the keyframe at or before the first wanted frame, decode forward,
keep only the wanted frames (converted to RGB by `decode_frames`, or left in
their YUV planes for the caller), stop after the last one. PyAV releases
the GIL while it decodes, so threads decode several videos at once.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np


def frame_index(pts: int, start: int, time_base: Fraction, fps: Fraction) -> int:
    """Constant-frame-rate presentation index of a frame from its timestamp."""
    return round((pts - start) * time_base * fps)


def decoded_frames(data: bytes | memoryview | np.ndarray, indices: np.ndarray) -> list[av.VideoFrame]:
    """The decoded `av.VideoFrame`s at `indices` (any order, repeats allowed), still in the video's pixel format.

    Raises ValueError when a wanted frame is not in the video, and PyAV's
    `av.FFmpegError` subclasses when the bytes do not decode.
    """
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "NONE"  # parallelism comes from decoding several videos at once
        fps, tb, start = stream.average_rate, stream.time_base, stream.start_time or 0
        needed = set(np.asarray(indices).tolist())
        first, last = min(needed), max(needed)
        if first > 0:
            container.seek(start + int(first / fps / tb), stream=stream, backward=True)
        wanted: dict[int, av.VideoFrame] = {}
        for frame in container.decode(stream):
            i = frame_index(frame.pts, start, tb, fps)
            if i in needed:
                wanted[i] = frame
            if i >= last:
                break
    missing = sorted(needed - set(wanted))
    if missing:
        raise ValueError(f"frames {missing[:5]} not found in the video")
    return [wanted[int(i)] for i in np.asarray(indices)]


def decode_frames(data: bytes | memoryview | np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(len(indices), H, W, 3) uint8 RGB frames at `indices` (see `decoded_frames`)."""
    return np.stack([frame.to_ndarray(format="rgb24") for frame in decoded_frames(data, indices)])
