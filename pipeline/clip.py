"""`ClipSpec`: what a model wants from a video, in one small frozen record.

Each zoo config carries one (`tpn.get_config(name).clip`); the loader, the
test protocol and the exporter read it, so `pipeline/` never imports `tpn/`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Sampling = Literal["dense", "segments"]
TestCrops = Literal["three", "center", "full"]
ShortVideo = Literal["loop", "edge"]

IMAGENET_MEAN = (123.675, 116.28, 103.53)  # RGB, 0-255 scale
IMAGENET_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True, kw_only=True)
class ClipSpec:
    """Frame sampling, augmentation and test views for one model.

    `dense`: `frames` frames `stride` apart from one start (SlowOnly F x S).
    `segments`: the video cut into `frames` equal segments, one frame from
    each (TSN / TSM); `stride` is unused.
    """

    frames: int = 8
    stride: int = 8
    sampling: Sampling = "dense"
    # dense clips longer than the video: wrap indices modulo the frame count
    # ("loop", as mmaction2) or repeat the last frame ("edge")
    short_video: ShortVideo = "loop"
    # training augmentation
    crop_size: int = 224
    scale_range: tuple[float, float] = (0.08, 1.0)
    ratio_range: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    flip_label_map: tuple[tuple[int, int], ...] = ()  # left/right class pairs
    color_jitter: bool = False
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # test protocol
    test_scale: int = 256  # short side before cropping
    test_crop: int = 256
    test_crops: TestCrops = "three"
    test_clips: int = 10  # dense: clips spread over the video
    twice_sample: bool = False  # segments: two interleaved clips
    test_flip: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError(f"ClipSpec.frames must be >= 1, got {self.frames}")
        if self.stride < 1:
            raise ValueError(f"ClipSpec.stride must be >= 1, got {self.stride}")
        if self.sampling not in ("dense", "segments"):
            raise ValueError(f"ClipSpec.sampling must be 'dense' or 'segments', got {self.sampling!r}")
        if self.short_video not in ("loop", "edge"):
            raise ValueError(f"ClipSpec.short_video must be 'loop' or 'edge', got {self.short_video!r}")
        if self.test_crops not in ("three", "center", "full"):
            raise ValueError(f"ClipSpec.test_crops must be 'three', 'center' or 'full', got {self.test_crops!r}")
        if self.test_clips < 1:
            raise ValueError(f"ClipSpec.test_clips must be >= 1, got {self.test_clips}")

    @property
    def num_test_clips(self) -> int:
        """Temporal clips per video at test time."""
        if self.sampling == "segments":
            return 2 if self.twice_sample else 1
        return self.test_clips

    @property
    def num_test_views(self) -> int:
        """Views per video at test time: clips x crops x flips."""
        crops = 3 if self.test_crops == "three" else 1
        flips = 2 if self.test_flip else 1
        return self.num_test_clips * crops * flips

    def replace(self, **changes) -> ClipSpec:
        return dataclasses.replace(self, **changes)
