"""Pieces every DALI backend shares: the augmentation graph, the read-ahead feed, outputs to torch.

Train and test differ by a mode argument, not by copies: `augment_train` is
one random resized crop per clip (the same box on every frame), the colour
jitter, frame order and flip; `augment_test` resizes the short side and cuts
one output per (crop, flip). Video backends run them on sequences (layout
"CFHW" out), the frame backend on single images ("HWC" out).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import backend, fn, types
from nvidia.dali.backend import TensorListGPU

from pipeline.clip import ClipSpec
from pipeline.clips import sampling
from pipeline.clips.plan import SamplePlan
from pipeline.errors import DataError, ShardError


def augment_train(x, feed: dict, spec: ClipSpec, layout: str = "CFHW") -> list:
    """One random resized crop per clip (same box on every frame), jitter, frame order, flip."""
    box = feed["box"]
    x = fn.resize(x, roi_start=box[0:2], roi_end=box[2:4], size=[spec.crop_size] * 2, antialias=False)
    if spec.color_jitter:
        j = feed["jitter"]
        x = fn.hsv(x, hue=j[0], saturation=j[1])
        x = fn.brightness_contrast(x, contrast=j[2], brightness_shift=j[3])
    if "order" in feed:
        x = fn.sequence_rearrange(x, new_order=feed["order"])
    return [normalise(x, spec, layout=layout, mirror=feed["flip"])]


def augment_test(x, feed: dict, spec: ClipSpec, layout: str = "CFHW") -> list:
    """Short side to test_scale, frames in clip order (sequences), then one output per (crop, flip)."""
    x = fn.resize(x, resize_shorter=spec.test_scale, antialias=False)
    if "order" in feed:
        x = fn.sequence_rearrange(x, new_order=feed["order"])
    crops = 3 if spec.test_crops == "three" else 1
    flips = (0, 1) if spec.test_flip else (0,)
    views = []
    for c in range(crops):
        window = {}
        if spec.test_crops != "full":
            pos = feed["positions"]
            window = {"crop": [spec.test_crop] * 2, "crop_pos_x": pos[c, 0], "crop_pos_y": pos[c, 1]}
        views += [normalise(x, spec, layout=layout, mirror=f, **window) for f in flips]
    return views


def normalise(x, spec: ClipSpec, layout: str = "CFHW", **kwargs):
    return fn.crop_mirror_normalize(
        x, mean=list(spec.mean), std=list(spec.std), output_layout=layout, dtype=types.FLOAT, **kwargs
    )


def view_inputs(plan: SamplePlan) -> dict[str, np.ndarray]:
    """A plan's per-sample DALI inputs: box, flip and jitter (train) or crop positions (test)."""
    if plan.train is None:
        return {"positions": plan.positions}
    view: sampling.TrainView = plan.train
    b = view.box
    inputs = {"box": np.array([b.y, b.x, b.y + b.h, b.x + b.w], np.float32), "flip": np.array(int(view.flip), np.int32)}
    if view.jitter is not None:
        j = view.jitter  # brightness goes to DALI as a fraction of the 0-255 range
        inputs["jitter"] = np.array([j.hue, j.saturation, j.contrast, j.brightness / 255.0], np.float32)
    return inputs


class Feed:
    """DALI's `external_source`: batch i of the current pass -> the inputs `prepare` makes of it.

    Batches are prepared (planned and read) `ahead` batches in advance on
    background threads, so file or network reads overlap DALI's decoding and
    the caller's work. `pending` lists batches handed to DALI and not yet
    returned; `host` holds, in the same order, what the host keeps of each.
    """

    def __init__(
        self, batches: Sequence[np.ndarray], prepare: Callable[[np.ndarray], tuple[tuple, dict]], ahead: int = 2
    ):
        self.batches = batches
        self.prepare = prepare
        self.pending: list[int] = []
        self.host: deque[dict] = deque()
        self.ahead = max(1, ahead)
        # Two batches in flight: one batch's reads wait on storage while the next one's are planned and sent.
        self._reader = ThreadPoolExecutor(2, thread_name_prefix="clip-feed")
        self._futures: dict[int, Future] = {}

    def __call__(self, info) -> tuple[list[np.ndarray], ...]:
        number = info.iteration
        if number >= len(self.batches):
            raise StopIteration
        for b in range(number, min(number + self.ahead + 1, len(self.batches))):
            if b not in self._futures:
                self._futures[b] = self._reader.submit(self.prepare, self.batches[b])
        inputs, host = self._futures.pop(number).result()
        self.pending.append(number)
        self.host.append(host)
        return inputs

    def done(self, number: int) -> dict:
        """Batch `number` came out of DALI: what the host kept of it."""
        self.pending.remove(number)
        return self.host.popleft()

    def pending_samples(self) -> list[int]:
        """Samples of the batches DALI holds: the candidates when it fails."""
        return [int(i) for b in self.pending for i in self.batches[b]]

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._reader.shutdown(wait=True, cancel_futures=True)


def dali_reason(err: Exception) -> str:
    """The operator's own words from a DALI pipeline error, on one line."""
    text = str(err)
    found = re.search(r"encountered:\s*\n(.*?)(?:\nC\+\+ context|\nCurrent pipeline|$)", text, re.S)
    return " ".join((found.group(1) if found else text).split())[:400]


def as_torch(output) -> torch.Tensor:
    """A DALI TensorList -> torch tensor on the same device, without a copy."""
    tensor = output.as_tensor()
    if isinstance(output, TensorListGPU):
        with torch.cuda.device(torch.cuda.current_device()):
            return torch.from_dlpack(tensor)
    return torch.from_dlpack(tensor)


def gpu_count() -> int:
    """The CUDA devices DALI sees."""
    try:
        return int(backend.GetCUDADeviceCount())
    except RuntimeError:
        return 0


def device_id(device: str) -> int | None:
    return torch.cuda.current_device() if device == "gpu" else None


class DaliBackend:
    """The pass loop every DALI backend shares: feed, run, name the failing sample, convert.

    A subclass says how a batch is prepared on the host (`prepare`: DALI
    inputs + what the host keeps), which graph runs (`build`), how outputs
    become torch (`to_torch`) and how a failure is narrowed to the sample or
    frame that caused it (`decode_error`).
    """

    def __init__(
        self,
        data,
        spec: ClipSpec,
        mode: str,
        plan,
        *,
        device: str,
        decoder: str,
        num_threads: int,
        prefetch: int,
        seed: int,
        batch_size: int,
    ):
        self.data, self.spec, self.mode, self.plan = data, spec, mode, plan
        self.device, self.decoder, self.num_threads = device, decoder, num_threads
        self.prefetch, self.seed, self.batch_size = prefetch, seed, batch_size

    def batches(self, batches: Sequence[np.ndarray], epoch: int):
        """(clips, labels, sample indices) of every batch, in order."""
        feed = Feed(batches, lambda indices: self.prepare(indices, epoch), ahead=self.prefetch + 1)
        try:
            # A fresh pipeline per pass (a few ms) so an abandoned pass never leaks prefetched batches.
            pipe = self.build(feed)
            pipe.build()
            for number in range(len(batches)):
                try:
                    outputs = pipe.run()
                except ShardError:
                    raise
                except RuntimeError as err:
                    raise self.decode_error(err, feed.pending_samples(), epoch) from err
                host = feed.done(number)
                views = [as_torch(o) for o in outputs]
                labels = torch.from_numpy(host["labels"]).to(views[0].device, non_blocking=True)
                yield self.to_torch(views, host), labels, host["indices"]
        finally:
            feed.close()

    def pipeline_args(self, batch_size: int) -> dict:
        return {
            "batch_size": batch_size,
            "num_threads": self.num_threads,
            "device_id": device_id(self.device),
            "prefetch_queue_depth": self.prefetch,
            "seed": self.seed,
        }

    def prepare(self, indices: np.ndarray, epoch: int) -> tuple[tuple, dict]:
        raise NotImplementedError

    def build(self, feed: Feed):
        raise NotImplementedError

    def to_torch(self, views: list[torch.Tensor], host: dict) -> torch.Tensor:
        raise NotImplementedError

    def decode_error(self, err: Exception, candidates: list[int], epoch: int) -> DataError:
        raise NotImplementedError
