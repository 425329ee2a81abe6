"""Frame shards decoded and augmented in host threads: libjpeg-turbo (simplejpeg) and OpenCV, no DALI.

The CPU path of frame shards. Per frame it does what the DALI graph does
(`pipeline.dali_frames`), with the operators a CPU runs fastest:

1. decode the JPEG with libjpeg-turbo (`simplejpeg`); where the crop box is
   at least twice the output on both sides, libjpeg-turbo's DCT-domain
   scaling decodes it at 1/2, 1/4 or 1/8 size directly;
2. crop the box and resize it to the output on uint8 (`cv2.resize`,
   bilinear, as DALI's `fn.resize` with antialias off);
3. flip, then the clip's colour jitter as one 3x4 map (`cv2.transform`,
   `pipeline.colour.jitter_matrix`);
4. normalise through a 256-entry table per channel (`cv2.LUT`), written
   straight into the batch tensor.

Every call above releases the GIL, so `num_threads` threads decode clips of
a batch in parallel while a reader thread fetches the next batches' JPEGs
and the caller trains on the current one. The plan (frames, boxes, flips,
jitter, test crops) is the `pipeline.plan.SamplePlan` the DALI path
consumes, so the two paths return the same frames, boxes and flips; their
pixels differ by resampling and rounding only (`tests/pipeline/test_loader.py`
states the tolerance).

Training clips come back as (N, 3, F, S, S) in channels_last_3d memory order
(the order the training step wants), test views as contiguous
(N, V, 3, F, H, W) in the loader's view order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np
import simplejpeg
import torch

from pipeline.clip import ClipSpec
from pipeline.colour import jitter_matrix, normalise_table
from pipeline.errors import DataError
from pipeline.plan import SamplePlan, crop_origin, resize_shorter
from pipeline.shardset import VERIFY_HINT, ShardSet

# OpenCV would split each small resize over its own thread pool; the loader's threads are the parallelism.
cv2.setNumThreads(1)


@dataclass
class _Batch:
    """One batch on its way: its plans, the output buffer and the clips' pending work."""

    plans: list[SamplePlan]
    out: np.ndarray  # train (N, F, S, S, 3); test (N, C, V', F, H, W, 3)
    tensor: torch.Tensor  # `out` as a tensor (the same memory)
    clips: list[Future]


class HostFrames:
    """Frame-shard batches made in host threads (see the module docstring)."""

    def __init__(self, data: ShardSet, spec: ClipSpec, mode: str, plan: Callable[[int, int], SamplePlan],
                 num_threads: int, prefetch: int, device: str = "cpu"):
        self.data, self.spec, self.mode, self.plan = data, spec, mode, plan
        self.num_threads, self.ahead = max(1, num_threads), max(1, prefetch) + 1
        self.device = device
        self.table = normalise_table(spec.mean, spec.std)
        self.flips = (False, True) if spec.test_flip else (False,)

    def batches(self, batches: Sequence[np.ndarray], epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, np.ndarray]]:
        """(clips, labels, sample indices) of every batch, in order; `ahead` batches are in flight."""
        reader = ThreadPoolExecutor(1, thread_name_prefix="frames-read")
        workers = ThreadPoolExecutor(self.num_threads, thread_name_prefix="frames-decode")
        inflight: deque[Future] = deque()
        try:
            for number in range(min(self.ahead, len(batches))):
                inflight.append(reader.submit(self._start, batches[number], epoch, workers))
            for number in range(len(batches)):
                batch = inflight.popleft().result()
                if number + self.ahead < len(batches):
                    inflight.append(reader.submit(self._start, batches[number + self.ahead], epoch, workers))
                for clip in batch.clips:
                    clip.result()  # a DataError from a clip surfaces here
                yield self._finish(batch)
        finally:
            reader.shutdown(wait=True, cancel_futures=True)
            workers.shutdown(wait=True, cancel_futures=True)

    # -- one batch

    def _start(self, indices: np.ndarray, epoch: int, workers: ThreadPoolExecutor) -> _Batch:
        """Plan the batch, read its JPEGs (one batch of reads), hand its clips to the workers."""
        plans = [self.plan(int(i), epoch) for i in indices]
        decode = [p.decode_plan() for p in plans]
        jpegs = self.data.frame_bytes_many([(p.index, unique) for p, (unique, _) in zip(plans, decode)])
        out = np.empty(self._shape(plans), np.float32)
        work = self._train_clip if self.mode == "train" else self._test_clip
        clips = [workers.submit(work, out[n], plan, unique, order, images)
                 for n, (plan, (unique, order), images) in enumerate(zip(plans, decode, jpegs))]
        return _Batch(plans, out, torch.from_numpy(out), clips)

    def _shape(self, plans: list[SamplePlan]) -> tuple[int, ...]:
        spec, n = self.spec, len(plans)
        if self.mode == "train":
            return (n, spec.frames, spec.crop_size, spec.crop_size, 3)
        h, w = self._test_size(plans[0])
        if any(self._test_size(p) != (h, w) for p in plans[1:]):
            raise DataError(f"test views of different sizes in one batch ({[self._test_size(p) for p in plans]}): "
                            "with test_crops='full' the videos of a batch must share one frame size")
        views = len(plans[0].positions) * len(self.flips)
        return (n, spec.num_test_clips, views, spec.frames, h, w, 3)

    def _test_size(self, plan: SamplePlan) -> tuple[int, int]:
        if self.spec.test_crops == "full":
            return resize_shorter(self.spec.test_scale, *self.data.frame_size(plan.index))
        return self.spec.test_crop, self.spec.test_crop

    def _finish(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        labels = torch.tensor([p.label for p in batch.plans], dtype=torch.int64)
        indices = np.array([p.index for p in batch.plans], np.int64)
        x = batch.tensor
        if self.mode == "train":
            clips = x.permute(0, 4, 1, 2, 3)  # (N, 3, F, S, S) over (N, F, S, S, 3) memory: channels_last_3d
        else:
            n, c, v, f, h, w, _ = x.shape  # clips-major views, each (3, F, H, W)
            clips = x.permute(0, 1, 2, 6, 3, 4, 5).reshape(n, c * v, 3, f, h, w)
        if self.device == "gpu":
            return clips.pin_memory().to("cuda", non_blocking=True), labels.to("cuda"), indices
        return clips, labels, indices

    # -- one clip (runs in a worker thread; the OpenCV and libjpeg-turbo calls release the GIL)

    def _train_clip(self, out: np.ndarray, plan: SamplePlan, unique: np.ndarray, order: np.ndarray,
                    jpegs: list[bytes]) -> None:
        """out (F, S, S, 3): decode, crop + resize, flip, jitter, normalise every distinct frame."""
        view, size = plan.train, self.spec.crop_size
        box = view.box
        colour = jitter_matrix(view.jitter) if view.jitter is not None else None
        height, width = self.data.frame_size(plan.index)
        for k, jpeg in enumerate(jpegs):
            image = self._decode(jpeg, plan, int(unique[k]), box_side=min(box.h, box.w), out_side=size)
            sy, sx = image.shape[0] / height, image.shape[1] / width  # 1 unless DCT-scaled
            y0, x0 = round(box.y * sy), round(box.x * sx)
            y1, x1 = max(y0 + 1, round((box.y + box.h) * sy)), max(x0 + 1, round((box.x + box.w) * sx))
            x = cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_LINEAR)
            if view.flip:
                x = cv2.flip(x, 1)
            if colour is not None:
                x = cv2.transform(x, colour)
            _write(x, self.table, [out[p] for p in np.flatnonzero(order == k)])

    def _test_clip(self, out: np.ndarray, plan: SamplePlan, unique: np.ndarray, order: np.ndarray,
                   jpegs: list[bytes]) -> None:
        """out (C, V', F, H, W, 3): decode, resize the short side, then every (crop, flip) view."""
        spec = self.spec
        height, width = resize_shorter(spec.test_scale, *self.data.frame_size(plan.index))
        for k, jpeg in enumerate(jpegs):
            image = self._decode(jpeg, plan, int(unique[k]))
            if image.shape[:2] != (height, width):
                image = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
            where = [divmod(int(p), spec.frames) for p in np.flatnonzero(order == k)]  # (clip, frame) showing it
            for c, (px, py) in enumerate(plan.positions):
                window = image
                if spec.test_crops != "full":
                    y0, x0 = crop_origin(py, height, spec.test_crop), crop_origin(px, width, spec.test_crop)
                    window = image[y0:y0 + spec.test_crop, x0:x0 + spec.test_crop]
                for i, flip in enumerate(self.flips):
                    x = cv2.flip(window, 1) if flip else window
                    v = c * len(self.flips) + i
                    _write(x, self.table, [out[clip, v, f] for clip, f in where])

    def _decode(self, jpeg: bytes, plan: SamplePlan, frame: int, box_side: int = 0, out_side: int = 0) -> np.ndarray:
        """RGB uint8; at 1/2, 1/4 or 1/8 size where the box stays at least `out_side` (DCT-domain scaling)."""
        scale = {}
        if out_side and box_side >= 2 * out_side:
            height, width = self.data.frame_size(plan.index)
            factor = box_side / out_side
            scale = {"min_height": math.ceil(height / factor), "min_width": math.ceil(width / factor), "min_factor": 2}
        try:
            return simplejpeg.decode_jpeg(jpeg, colorspace="RGB", **scale)
        except ValueError as err:
            raise DataError(
                f"could not decode {self.data.where(plan.index)}, frame {frame} ({err}); "
                + VERIFY_HINT.format(dir=self.data.folder(plan.index))
            ) from None


def _write(image: np.ndarray, table: np.ndarray, targets: list[np.ndarray]) -> None:
    """Normalise `image` into the first target and copy it to the others (clip positions showing one frame)."""
    cv2.LUT(image, table, dst=targets[0])
    for target in targets[1:]:
        target[...] = targets[0]
