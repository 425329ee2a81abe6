"""The loaders mmaction2 users run today, built as they build them, for `benchmarks.data` to race.

* `rawframes_loader`: mmaction2's RawFrameDataset: one folder of
  `img_00001.jpg ...` per video (a list file gives folder, frame count,
  label), the sampled frames read and decoded with OpenCV (`cv2.imdecode`,
  then BGR -> RGB, as `mmcv.imfrombytes(channel_order="rgb")`);
* `decord_loader`: mmaction2's DecordInit + DecordDecode: a
  `decord.VideoReader` per sample on an H.264 mp4, `get_batch` of the
  sampled frames.

Both run in a torch DataLoader with one worker per core and do the recipe's
augmentation per clip with OpenCV and numpy (`augment`): the random resized
crop, resize to the crop size (bilinear), flip, colour jitter as one affine
map, normalise to float32, (3, F, S, S). Frames, boxes, flips and jitter
come from `pipeline.clips.sampling` with the same per-sample random streams as
`ClipLoader`, so every contender does the same work on the same clips.
Samples stream endlessly in a shuffled order (no epoch boundary inside a
timing window).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline import ClipSpec
from pipeline.clips.colour import jitter_matrix
from pipeline.clips.plan import plan_sample


def read_list(path: Path) -> list[tuple[str, int, int, int, int]]:
    """(location, frames, label, height, width) per line of a list file written by `benchmarks.footage`."""
    rows = []
    for line in Path(path).read_text().splitlines():
        where, frames, label, h, w = line.rsplit(" ", 4)
        rows.append((where, int(frames), int(label), int(h), int(w)))
    return rows


def augment(frames: list[np.ndarray], plan, spec: ClipSpec) -> torch.Tensor:
    """F decoded (H, W, 3) uint8 RGB frames -> (3, F, S, S) float32: crop, resize, flip, jitter, normalise."""
    view, size = plan.train, spec.crop_size
    b = view.box
    colour = jitter_matrix(view.jitter) if view.jitter is not None else None
    mean, std = np.array(spec.mean, np.float32), np.array(spec.std, np.float32)
    out = np.empty((len(frames), size, size, 3), np.float32)
    for i, frame in enumerate(frames):
        x = cv2.resize(frame[b.y : b.y + b.h, b.x : b.x + b.w], (size, size), interpolation=cv2.INTER_LINEAR)
        if view.flip:
            x = cv2.flip(x, 1)
        if colour is not None:
            x = cv2.transform(x, colour)
        np.subtract(x, mean, out=out[i], dtype=np.float32)
        out[i] /= std
    return torch.from_numpy(out).permute(3, 0, 1, 2).contiguous()


class ClipStream(IterableDataset):
    """Endless training clips of the listed videos: a shuffled order per pass, split over the workers."""

    def __init__(
        self, rows: list, spec: ClipSpec, decode: Callable[[str, np.ndarray], list[np.ndarray]], seed: int = 0
    ):
        self.rows, self.spec, self.decode, self.seed = rows, spec, decode, seed

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        epoch = 0
        while True:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
            for index in order[worker::workers]:
                where, count, label, h, w = self.rows[index]
                plan = plan_sample(self.spec, "train", self.seed, epoch, int(index), count, (h, w), label)
                yield augment(self.decode(where, plan.frames), plan, self.spec), plan.label
            epoch += 1


def decode_rawframes(folder: str, indices: np.ndarray) -> list[np.ndarray]:
    """mmaction2's RawFrameDecode: read and decode img_{i+1:05d}.jpg of every sampled frame, as RGB."""
    frames = []
    for i in indices:
        data = np.fromfile(f"{folder}/img_{int(i) + 1:05d}.jpg", np.uint8)
        frames.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return frames


def decode_decord(path: str, indices: np.ndarray) -> list[np.ndarray]:
    """mmaction2's DecordInit + DecordDecode: a VideoReader per sample, one get_batch of the sampled frames."""
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    return list(reader.get_batch([int(i) for i in indices]).asnumpy())


def _worker_init(_: int) -> None:
    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def peer_loader(
    listing: Path, spec: ClipSpec, decode: Callable, *, batch_size: int, workers: int, seed: int = 0
) -> DataLoader:
    return DataLoader(
        ClipStream(read_list(listing), spec, decode, seed),
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=workers > 0,
        worker_init_fn=_worker_init,
        drop_last=True,
    )


def rawframes_loader(listing: Path, spec: ClipSpec, **kw) -> DataLoader:
    return peer_loader(listing, spec, decode_rawframes, **kw)


def decord_loader(listing: Path, spec: ClipSpec, **kw) -> DataLoader:
    return peer_loader(listing, spec, decode_decord, **kw)
