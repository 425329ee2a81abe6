"""What one sample contributes to a batch: a pure function of (seed, epoch, sample) and the index.

Every backend (DALI or host threads, video or frame shards) consumes the same
`SamplePlan`, so the backends are interchangeable: the same frames, crop box,
flip and jitter for the same (seed, epoch, sample), whichever decodes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.clips import sampling
from pipeline.clip import ClipSpec
from pipeline.options import Mode


@dataclass(frozen=True)
class SamplePlan:
    """label (after any flip), frames (C, F) or (F,), and the view: a training draw or test crop positions."""

    index: int
    label: int
    frames: np.ndarray
    train: sampling.TrainView | None = None
    positions: np.ndarray | None = None  # (crops, 2) normalised (x, y), test mode

    def decode_plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(distinct frames to decode, sorted; order that rebuilds `frames` from them)."""
        return sampling.decode_plan(self.frames)


def plan_sample(
    spec: ClipSpec, mode: Mode, seed: int, epoch: int, index: int, count: int, size: tuple[int, int], label: int
) -> SamplePlan:
    """The plan of sample `index` (`count` frames of `size` (H, W), class `label`) in `epoch`."""
    height, width = size
    if mode == "train":
        view = sampling.draw_train_view(spec, count, height, width, sampling.sample_rng(seed, epoch, index))
        if view.flip:
            label = sampling.flip_label(label, spec.flip_label_map)
        return SamplePlan(index, label, view.indices, train=view)
    positions = np.array(sampling.view_crop_positions(spec, height, width), np.float32)
    return SamplePlan(index, label, sampling.clip_indices(spec, count, "test"), positions=positions)


def resize_shorter(short: int, height: int, width: int) -> tuple[int, int]:
    """(H, W) of a frame resized to short side `short`, the other side rounded as DALI's
    `fn.resize(resize_shorter=...)` rounds it: half away from zero."""
    scale = short / min(height, width)
    if height <= width:
        return short, int(math.floor(width * scale + 0.5))
    return int(math.floor(height * scale + 0.5)), short


def crop_origin(position: float, extent: int, crop: int) -> int:
    """The first pixel of a `crop`-long window at normalised `position` in `extent` (DALI's rounding)."""
    return int(math.floor(position * (extent - crop) + 0.5))
