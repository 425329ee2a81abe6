"""`ClipLoader`: WebDataset shards -> DALI video decoding and augmentation -> torch batches.

The host side decides *what* every batch holds: sample order, frame indices,
crop boxes, flips and jitter are pure functions of (seed, epoch, sample)
(`pipeline.batching`, `pipeline.sampling`), fed to DALI through one
`external_source` that reads the encoded video straight out of the tar by its
`.idx` offset. DALI does the work: `fn.decoders.video` (NVDEC through
`device="mixed"`, or libavcodec on the CPU threads) decodes each distinct
frame once, then resize / crop / flip / normalise run on the loader's device
(the GPU when there is one).

Feeding DALI this way, rather than through `fn.readers.webdataset`, buys
three things the trainer relies on: an epoch is a true permutation of all
samples, batch k of epoch e can be produced without decoding batches
0..k-1 (exact mid-epoch resume), and test mode sees every sample exactly
once with no reader padding to strip.

Frame shards (one JPEG per frame) take the same host-side plan, but DALI
gets only the JPEGs of the sampled frames (each distinct frame once), as one
flat batch of images: `fn.decoders.image` decodes them (nvJPEG with the
hardware JPEG decoder on a GPU through `device="mixed"`, libjpeg-turbo on the
CPU threads otherwise), the same resize / crop / flip / normalise follow per
image, and the host regroups the images into clips. Training clips of frame
shards come back in `channels_last_3d` memory order (a view of DALI's NHWC
output, no copy), which is the layout the training step wants.

Reading is done ahead: a background thread plans the next batches and reads
their bytes while DALI decodes the current ones.

Test-mode views come back as (N, V, 3, F, H, W) with V ordered clips-major,
then spatial crops (left/top, centre, right/bottom), then flips (unflipped
first): view = (clip * crops + crop) * flips + flip.
"""

from __future__ import annotations

import os
import re
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from nvidia.dali import backend, fn, pipeline_def, types
from nvidia.dali.backend import TensorListGPU

from pipeline import batching, sampling
from pipeline.cli import DECODERS, LOADER_DEVICES
from pipeline.clip import ClipSpec
from pipeline.jpeg import JpegError, decode_check
from pipeline.pyav import decode_frames
from pipeline.errors import DataError, ShardError
from pipeline.shardset import VERIFY_HINT, ShardSet

Mode = Literal["train", "test"]
Device = Literal["auto", "cpu", "gpu", "cuda"]  # LOADER_DEVICES; "cuda" is another name for "gpu"
Decoder = Literal["auto", "nvdec", "cpu", "pyav", "nvjpeg"]  # DECODERS
FRAME_DECODERS = ("auto", "cpu", "nvjpeg")  # what frame shards accept
# Share of the JPEGs that nvJPEG gives the hardware decoder on GPUs that have one (DALI's default).
HW_DECODER_LOAD = 0.65


# ----------------------------------------------------------------------------- DALI graph


def feed_fields(mode: Mode, spec: ClipSpec, decoder: str = "cpu") -> tuple[str, ...]:
    """Per-sample inputs the host hands DALI, in `external_source` output order."""
    frames = () if decoder == "pyav" else ("frames",)  # PyAV frames arrive decoded
    common = ("video", "label", "index", *frames, "order")
    if mode == "train":
        return common + ("box", "flip") + (("jitter",) if spec.color_jitter else ())
    return common + (() if spec.test_crops == "full" else ("positions",))


@pipeline_def(exec_dynamic=True)
def clip_pipeline(source, mode: Mode, spec: ClipSpec, device: str, decoder: str = "nvdec"):
    """The loader's DALI graph; train and test differ only by `mode`.

    `source` is a batch-mode callable returning one list per `feed_fields`
    entry. On device "gpu", `decoder` "nvdec" decodes on the GPU and "cpu"
    decodes with libavcodec and moves the frames to the GPU for the rest.
    Outputs: one (N, 3, C*F, H, W) float tensor per spatial view (C temporal
    clips in a row), then labels (N,) and sample indices (N,).
    """
    fields = feed_fields(mode, spec, decoder)
    feed = dict(zip(fields, fn.external_source(source=source, batch=True, batch_info=True, num_outputs=len(fields))))
    nvdec = device == "gpu" and decoder == "nvdec"
    if decoder == "pyav":  # the host already decoded the frames (F, H, W, 3)
        x = fn.reshape(feed["video"], layout="FHWC")
    else:
        # pad_mode="none": a frame count that disagrees with the video is an error, not black frames.
        x = fn.decoders.video(feed["video"], frames=feed["frames"], pad_mode="none",
                              **({"device": "mixed", "affine": False} if nvdec else {"device": "cpu"}))  # fmt: skip
    if device == "gpu" and not nvdec:
        x = x.gpu()
    views = _train_views(x, feed, spec) if mode == "train" else _test_views(x, feed, spec)
    return (*views, feed["label"], feed["index"])


def _train_views(x, feed: dict, spec: ClipSpec, layout: str = "CFHW") -> list:
    """One random resized crop per clip (same box on every frame), jitter, frame order, flip.

    Sequences (video shards) are put in clip order here; single images (frame
    shards, layout "HWC") are regrouped into clips by the host afterwards.
    """
    box = feed["box"]
    x = fn.resize(x, roi_start=box[0:2], roi_end=box[2:4], size=[spec.crop_size] * 2, antialias=False)
    if spec.color_jitter:
        j = feed["jitter"]
        x = fn.hsv(x, hue=j[0], saturation=j[1])
        x = fn.brightness_contrast(x, contrast=j[2], brightness_shift=j[3])
    if "order" in feed:
        x = fn.sequence_rearrange(x, new_order=feed["order"])
    return [_normalise(x, spec, layout=layout, mirror=feed["flip"])]


def _test_views(x, feed: dict, spec: ClipSpec, layout: str = "CFHW") -> list:
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
        views += [_normalise(x, spec, layout=layout, mirror=f, **window) for f in flips]
    return views


@pipeline_def
def decode_probe(source, nvdec: bool):
    """Decode one sample alone: how a failed batch is narrowed down to the bad video."""
    video, frames = fn.external_source(source=source, num_outputs=2, batch=True)
    return fn.decoders.video(video, frames=frames, pad_mode="none", device="mixed" if nvdec else "cpu")


def _normalise(x, spec: ClipSpec, layout: str = "CFHW", **kwargs):
    return fn.crop_mirror_normalize(
        x, mean=list(spec.mean), std=list(spec.std), output_layout=layout, dtype=types.FLOAT, **kwargs
    )


def frame_feed_fields(mode: Mode, spec: ClipSpec) -> tuple[str, ...]:
    """Per-image inputs of the frame-shard graph, in `external_source` output order."""
    if mode == "train":
        return ("jpeg", "box", "flip") + (("jitter",) if spec.color_jitter else ())
    return ("jpeg",) + (() if spec.test_crops == "full" else ("positions",))


@pipeline_def(exec_dynamic=True)
def frame_pipeline(source, mode: Mode, spec: ClipSpec, device: str, decoder: str = "cpu",
                   hw_decoder_load: float = HW_DECODER_LOAD):
    """The frame-shard graph: a flat batch of JPEGs (every frame of every clip) -> augmented images.

    Each image carries its clip's plan (the same box, flip and jitter for all
    frames of a clip). Outputs: train, one (images, H, W, 3) float tensor;
    test, one such tensor per spatial view (crop, flip).
    """
    fields = frame_feed_fields(mode, spec)
    feed = dict(zip(fields, fn.external_source(source=source, batch=True, batch_info=True, num_outputs=len(fields))))
    if decoder == "nvjpeg":
        x = fn.decoders.image(feed["jpeg"], device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load)
    else:
        x = fn.decoders.image(feed["jpeg"], device="cpu", output_type=types.RGB)
        x = x.gpu() if device == "gpu" else x
    views = _train_views(x, feed, spec, "HWC") if mode == "train" else _test_views(x, feed, spec, "HWC")
    return tuple(views)


# ----------------------------------------------------------------------------- host side


class _Feed:
    """DALI's `external_source`: batch i of the current pass -> encoded bytes + per-sample plans.

    Batches are prepared (planned and read) `ahead` batches in advance on a
    background thread, so file or network reads overlap DALI's decoding and
    the caller's work. `pending` lists batches handed to DALI and not yet
    returned; `host` holds, in the same order, what the host keeps of each
    (frame shards: labels, sample indices and how images regroup into clips).
    """

    def __init__(self, loader: ClipLoader, batches: Sequence[np.ndarray], epoch: int, pool=None, ahead: int = 2):
        self.loader = loader
        self.batches = batches
        self.epoch = epoch
        self.pending: list[int] = []
        self.host: deque[dict] = deque()
        self.pool = pool  # threads decoding with PyAV (decoder="pyav")
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
                self._futures[b] = self._reader.submit(self._prepare, b)
        inputs, host = self._futures.pop(number).result()
        self.pending.append(number)
        self.host.append(host)
        return inputs

    def _prepare(self, number: int) -> tuple[tuple[list[np.ndarray], ...], dict]:
        indices = [int(i) for i in self.batches[number]]
        if self.loader.data.is_frames:
            return self.loader._frame_batch(indices, self.epoch)
        videos = self.loader.data.videos(indices)  # one batch of reads (concurrent for remote shards)
        feed = lambda iv: self.loader._sample_feed(iv[0], self.epoch, iv[1])  # noqa: E731
        pairs = list(zip(indices, videos))
        rows = list(self.pool.map(feed, pairs)) if self.pool else [feed(p) for p in pairs]
        fields = feed_fields(self.loader.mode, self.loader.clip, self.loader.decoder)
        return tuple([row[f] for row in rows] for f in fields), {}

    def close(self) -> None:
        for future in self._futures.values():
            future.cancel()
        self._reader.shutdown(wait=True, cancel_futures=True)


def resolve_loader_device(device: Device) -> str:
    """Where the loader runs: "gpu" or "cpu". 'auto' -> 'gpu' when torch and DALI both see a CUDA device."""
    if device not in LOADER_DEVICES:
        raise ValueError(f"device must be 'auto', 'cpu', 'gpu' or 'cuda' (the same as 'gpu'), got {device!r}")
    has_gpu = torch.cuda.is_available() and _dali_gpu_count() > 0
    if device in ("gpu", "cuda") and not has_gpu:
        raise RuntimeError(
            f"device={device!r} but torch and DALI see no CUDA GPU: use device='cpu' (VP9 shards) or device='auto'"
        )
    if device == "auto":
        return "gpu" if has_gpu else "cpu"
    return "cpu" if device == "cpu" else "gpu"


CPU_CODECS = ("vp9", "vp8", "mjpeg")  # what DALI's CPU video decoder handles


def resolve_decoder(decoder: Decoder, device: str, codec: str) -> str:
    """Where the frames are decoded: "nvdec", "cpu" (DALI's CPU decoder) or "pyav" (host threads).

    "auto" on a GPU decodes VP9 on the CPU threads and augments on the GPU:
    measured on an H100 with 16 cores (`python -m benchmarks.loader_variants`,
    320x240 VP9, 8x8 clips), DALI's NVDEC path gave 51 clips/s and the CPU
    decoder 172 (batch 8) to 308 (batch 32). H.264 has no CPU decoder in DALI,
    so it stays on NVDEC.

    Frame shards ("jpeg") decode with nvJPEG ("nvjpeg", DALI's mixed image
    decoder, which uses the GPU's hardware JPEG engines where there are some)
    or on the CPU threads ("cpu", libjpeg-turbo); "auto" takes nvJPEG on a GPU.
    """
    if codec == "jpeg":
        if decoder not in FRAME_DECODERS:
            raise ValueError(
                f"decoder={decoder!r} decodes video; these shards hold JPEG frames, which decode with "
                f"{', '.join(map(repr, FRAME_DECODERS))}"
            )
        return "cpu" if device == "cpu" or decoder == "cpu" else "nvjpeg"
    if decoder == "nvjpeg":
        raise ValueError(f"decoder='nvjpeg' decodes JPEG frame shards; these shards hold {codec} video: use "
                         "'auto', 'nvdec', 'cpu' or 'pyav'")
    if decoder == "pyav":
        return "pyav"
    if device == "cpu":
        return "cpu"
    if decoder != "auto":
        return decoder
    return "cpu" if codec in CPU_CODECS else "nvdec"


def _dali_gpu_count() -> int:
    try:
        return int(backend.GetCUDADeviceCount())
    except RuntimeError:
        return 0


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit arguments win; otherwise torch.distributed's, when it is initialised."""
    dist = torch.distributed
    live = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if live else 0
    if world_size is None:
        world_size = dist.get_world_size() if live else 1
    batching.check_rank(rank, world_size)
    return rank, world_size


def _check_spec(spec: ClipSpec) -> None:
    if not isinstance(spec, ClipSpec):
        raise TypeError(f"clip must be a pipeline.ClipSpec, got {type(spec).__name__}")
    if spec.test_crops != "full" and spec.test_crop > spec.test_scale:
        raise ValueError(
            f"ClipSpec.test_crop ({spec.test_crop}) is larger than the short side after "
            f"test resizing (test_scale={spec.test_scale}): lower test_crop or raise test_scale"
        )


class ClipLoader:
    """Batches of clips from WebDataset shards (video or JPEG frames), decoded and augmented by DALI.

    shards: a shard directory (all `*.tar`, or `<split>-*.tar` with `split`)
        or a list of tar paths, each with its `.idx` beside it. The format
        (video or frame shards) is read from the shards themselves.
    clip: what the model wants (`tpn.get_config(name).clip`).
    mode: "train" yields (N, 3, F, H, W) float32 normalised clips and int64
        labels, last partial batch dropped, the same batch count on every rank;
        "test" yields (N, V, 3, F, H, W) with V = clip.num_test_views (see the
        module docstring for the view order), every sample once over all ranks.
    device: "gpu" (or "cuda") augments on the GPU and returns CUDA tensors; "cpu" decodes
        VP9 with libavcodec; "auto" picks the GPU when torch and DALI see one.
    decoder: on the GPU, "nvdec" decodes with NVDEC (any codec it supports)
        and "cpu" decodes VP9 on the CPU threads, then augments on the GPU;
        "auto" picks "cpu" for VP9 shards and "nvdec" for H.264 (see
        `resolve_decoder`). On device "cpu" DALI decodes on the CPU.
        "pyav" (either device, any codec libavcodec reads) decodes the
        sampled frames with PyAV in `num_threads` host threads and hands
        DALI raw frames for the augmentation. Frame shards take "auto",
        "nvjpeg" (GPU) or "cpu".
    seed: with the epoch (`set_epoch`) it fixes every batch bit for bit.
    rank, world_size: default to torch.distributed's when initialised.
    return_keys: also yield the list of sample keys of each batch.
    num_threads: DALI worker threads (default: the CPUs this process may use).
    prefetch: batches DALI prepares ahead (the host reads one more).
    max_open: shards kept open at once (default from the descriptor limit).
    hw_decoder_load: frame shards on a GPU: share of the JPEGs nvJPEG sends
        to the hardware JPEG decoder (the rest decode on CUDA cores).

    Bad shards raise at construction (FileNotFoundError, `ShardReadError`,
    ValueError for H.264 on CPU); a video or frame DALI cannot decode raises
    `DataError` during iteration, naming its shard, key (and frame).
    Open files are released by `close()`, `with ClipLoader(...) as loader:`
    or garbage collection.
    """

    def __init__(
        self,
        shards: str | Path | Sequence[str | Path],
        clip: ClipSpec,
        *,
        mode: Mode = "train",
        batch_size: int,
        device: Device = "auto",
        seed: int = 0,
        num_threads: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        return_keys: bool = False,
        split: str | None = None,
        prefetch: int = 2,
        decoder: Decoder = "auto",
        max_open: int | None = None,
        hw_decoder_load: float = HW_DECODER_LOAD,
    ):
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        _check_spec(clip)
        self.clip, self.mode, self.batch_size, self.seed = clip, mode, batch_size, seed
        self.return_keys, self.prefetch, self.hw_decoder_load = return_keys, prefetch, hw_decoder_load
        self.num_threads = num_threads or len(os.sched_getaffinity(0))
        self.device = resolve_loader_device(device)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {', '.join(map(repr, DECODERS))}, got {decoder!r}")
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.data = ShardSet.open(shards, split, max_open=max_open)
        self._num_samples = len(self.data)
        self.decoder = resolve_decoder(decoder, self.device, self.data.codec)
        self._check_codec()
        self._check_length()
        self._epoch, self._start = 0, 0

    # -- public API

    def close(self) -> None:
        """Release the shards' open files and the index's memory map; a closed loader cannot iterate again."""
        self.data.close()

    def __enter__(self) -> ClipLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def classes(self) -> list[str]:
        return list(self.data.classes)

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    def __len__(self) -> int:
        n = self._num_samples
        if self.mode == "train":
            return batching.num_train_batches(n, self.batch_size, self.world_size)
        return batching.num_test_batches(n, self.batch_size, self.rank, self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Choose the epoch the next iteration yields, starting at batch `start_batch`.

        Batches start_batch.. are identical to those of an uninterrupted epoch;
        the skipped ones are not decoded. `start_batch` applies to the next
        iteration only; iterating again without `set_epoch` repeats the
        epoch from batch 0 (like DistributedSampler).
        """
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= len(self):
            raise ValueError(f"start_batch must be in [0, {len(self)}], got {start_batch}")
        self._epoch, self._start = epoch, start_batch

    def __iter__(self) -> Iterator[tuple]:
        if self.data.closed:
            raise ValueError("this ClipLoader was closed; create a new one to read the shards again")
        epoch, start = self._epoch, self._start
        self._start = 0
        batches = self._plan(epoch)[start:]
        if len(batches) == 0:
            return
        pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="pyav") if self.decoder == "pyav" else None
        feed = _Feed(self, batches, epoch, pool, ahead=self.prefetch + 1)
        try:
            # A fresh pipeline per pass (a few ms) so an abandoned pass never leaks prefetched batches.
            pipe = self._build(feed)
            for number in range(len(batches)):
                outputs = self._run(pipe, feed)
                feed.pending.remove(number)
                host = feed.host.popleft()
                yield self._frames_to_torch(outputs, host) if self.data.is_frames else self._to_torch(outputs)
        finally:
            feed.close()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    # -- host-side planning

    def _plan(self, epoch: int) -> Sequence[np.ndarray]:
        n = len(self.data)
        if self.mode == "train":
            return batching.train_batches(n, self.batch_size, self.seed, epoch, self.rank, self.world_size)
        return [
            batching.test_batch(n, self.batch_size, b, self.rank, self.world_size) for b in range(len(self))
        ]

    def _sample_feed(self, index: int, epoch: int, video: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """One sample's inputs to DALI (see `feed_fields`): bytes, label, frames and view plan."""
        data = self.data
        label, indices, extra = self._sample_plan(index, epoch)
        frames, order = sampling.decode_plan(indices)
        video = data.video(index) if video is None else video
        if self.decoder == "pyav":
            video = self._pyav_frames(index, video, frames)
        return {"video": video, "label": np.array(label, np.int64), "index": np.array(index, np.int64),
                "frames": frames, "order": order, **extra}

    def _sample_plan(self, index: int, epoch: int) -> tuple[int, np.ndarray, dict[str, np.ndarray]]:
        """(label after any flip, frame indices (C, F) or (F,), per-sample DALI plan inputs)."""
        spec, data = self.clip, self.data
        count = data.frame_count(index)
        height, width = data.frame_size(index)
        label = data.label(index)
        if self.mode == "train":
            view = sampling.draw_train_view(spec, count, height, width, sampling.sample_rng(self.seed, epoch, index))
            if view.flip:
                label = sampling.flip_label(label, spec.flip_label_map)
            return label, view.indices, _train_inputs(view)
        return label, sampling.clip_indices(spec, count, "test"), {"positions": _test_positions(spec, height, width)}

    def _frame_batch(self, indices: list[int], epoch: int) -> tuple[tuple[list[np.ndarray], ...], dict]:
        """A frame-shard batch: per-image DALI inputs and the host's regrouping plan.

        Each sample contributes its distinct sampled frames (read by offset, no
        other bytes); `gather[n]` maps clip position -> image number in the batch.
        """
        fields = frame_feed_fields(self.mode, self.clip)
        inputs: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        plans = [self._sample_plan(index, epoch) for index in indices]
        unique = [sampling.decode_plan(frames) for _, frames, _ in plans]
        images = self.data.frame_bytes_many([(index, u) for index, (u, _) in zip(indices, unique)])  # one batch of reads
        labels, gather = [], []
        for (label, _, extra), (_, order), jpegs in zip(plans, unique, images):
            gather.append(len(inputs["jpeg"]) + order)
            inputs["jpeg"] += [np.frombuffer(b, dtype=np.uint8) for b in jpegs]
            for name in fields[1:]:
                inputs[name] += [extra[name]] * len(jpegs)
            labels.append(label)
        host = {"labels": np.array(labels, np.int64), "indices": np.array(indices, np.int64),
                "gather": np.stack(gather)}
        return tuple(inputs[f] for f in fields), host

    def _pyav_frames(self, index: int, video: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """The sampled frames (len(frames), H, W, 3), or a DataError naming the sample."""
        try:
            return decode_frames(video, frames)
        except (av.FFmpegError, ValueError, IndexError) as err:
            raise DataError(
                f"PyAV could not decode {self.data.where(index)}: {err}. "
                + VERIFY_HINT.format(dir=self.data.folder(index))
            ) from err

    # -- checks at construction

    def _check_codec(self) -> None:
        if self.data.codec == "h264" and self.decoder == "cpu":
            folder = self.data.tars[0].parent
            raise ValueError(
                f"the shards in {folder} hold H.264 video, which DALI cannot decode on the CPU "
                "(its CPU decoder handles VP9/VP8/MJPEG only; H.264 needs NVDEC on a GPU). "
                "Use device='gpu' with NVDEC, decoder='pyav' (PyAV decodes it on the host), "
                "or re-shard as VP9: `python -m pipeline.shard SRC --out OUT --codec vp9`"
            )

    def _check_length(self) -> None:
        if len(self) == 0:
            raise ValueError(
                f"{len(self.data)} samples give no full batch of {self.batch_size} on each of "
                f"{self.world_size} rank(s) in train mode: lower batch_size or add data"
            )

    # -- running DALI

    def _device_id(self) -> int | None:
        return torch.cuda.current_device() if self.device == "gpu" else None

    def _build(self, feed: _Feed):
        common = {"num_threads": self.num_threads, "device_id": self._device_id(),
                  "prefetch_queue_depth": self.prefetch, "seed": self.seed}
        if self.data.is_frames:
            # One DALI sample per image: a batch holds every distinct frame of its clips.
            per_sample = self.clip.frames * (1 if self.mode == "train" else self.clip.num_test_clips)
            pipe = frame_pipeline(feed, self.mode, self.clip, self.device, self.decoder, self.hw_decoder_load,
                                  batch_size=self.batch_size * per_sample, **common)
        else:
            pipe = clip_pipeline(feed, self.mode, self.clip, self.device, self.decoder, batch_size=self.batch_size,
                                 **common)
        pipe.build()
        return pipe

    def _run(self, pipe, feed: _Feed):
        try:
            return pipe.run()
        except ShardError:
            raise
        except RuntimeError as err:
            candidates = [int(i) for b in feed.pending for i in feed.batches[b]]
            raise self._decode_error(err, candidates, feed.epoch) from err

    def _decode_error(self, err: Exception, candidates: list[int], epoch: int) -> DataError:
        """Name the sample(s) DALI failed on, by re-decoding each candidate alone."""
        if self.data.is_frames:
            return self._frame_error(err, candidates, epoch)
        bad = [i for i in candidates if not self._decodes(i, epoch)] or candidates
        names = "; ".join(self.data.where(i) for i in bad[:8]) + (" ..." if len(bad) > 8 else "")
        return DataError(
            f"DALI could not decode {names}: {_dali_reason(err)}. DALI aborts the whole pipeline "
            "on a corrupt video; " + VERIFY_HINT.format(dir=self.data.folder(bad[0]))
        )

    def _frame_error(self, err: Exception, candidates: list[int], epoch: int) -> DataError:
        """Name the frame(s) that do not decode, by decoding each sampled JPEG on the host."""
        bad = []
        for index in candidates:
            unique, _ = sampling.decode_plan(self._sample_plan(index, epoch)[1])
            for frame, image in zip(unique, self.data.frame_bytes(index, unique)):
                try:
                    decode_check(image)
                except JpegError as reason:
                    bad.append((index, int(frame), str(reason)))
        if not bad:
            return DataError(f"DALI failed on a batch of frames it could not name: {_dali_reason(err)}")
        names = "; ".join(f"{self.data.where(i)}, frame {f} ({why})" for i, f, why in bad[:8])
        return DataError(
            f"could not decode {names}{' ...' if len(bad) > 8 else ''}. DALI aborts the whole pipeline on a "
            "corrupt frame; " + VERIFY_HINT.format(dir=self.data.folder(bad[0][0]))
        )

    def _decodes(self, index: int, epoch: int) -> bool:
        """Whether one sample decodes alone with the frames the loader asks of it."""
        row = self._sample_feed(index, epoch)
        probe = decode_probe(
            lambda: ([row["video"]], [row["frames"]]), nvdec=self.decoder == "nvdec",
            batch_size=1, num_threads=1, device_id=self._device_id(),
        )
        try:
            probe.build()
            probe.run()
            return True
        except RuntimeError:
            return False

    def _to_torch(self, outputs) -> tuple:
        *views, labels, indices = [_as_torch(o) for o in outputs]
        clips = views[0] if self.mode == "train" else self._stack_views(views)
        labels = labels.to(clips.device, non_blocking=True)
        if not self.return_keys:
            return clips, labels
        return clips, labels, [self.data.key(int(i)) for i in indices]

    def _frames_to_torch(self, outputs, host: dict) -> tuple:
        """Per-image DALI outputs (images, H, W, 3) -> clips, regrouped on the host's plan."""
        views = [_as_torch(o) for o in outputs]
        device = views[0].device
        order = host["gather"]  # (N, C*F) image number of every clip position
        labels = torch.from_numpy(host["labels"]).to(device, non_blocking=True)
        n, f = order.shape[0], self.clip.frames
        if self.mode == "train":
            x = views[0]  # (images, H, W, 3); already in clip order unless a short video repeats frames
            if not np.array_equal(order.ravel(), np.arange(order.size)):
                x = x[torch.from_numpy(order.ravel()).to(device)]
            clips = x.view(n, f, *x.shape[1:]).permute(0, 4, 1, 2, 3)  # (N, 3, F, H, W), channels_last_3d
        else:
            c = self.clip.num_test_clips
            gather = torch.from_numpy(order).to(device)
            per_view = [v[gather].view(n, c, f, *v.shape[1:]).permute(0, 1, 5, 2, 3, 4) for v in views]
            clips = torch.stack(per_view, dim=2).flatten(1, 2)  # (N, C*V', 3, F, H, W), clips-major
        if not self.return_keys:
            return clips, labels
        return clips, labels, [self.data.key(int(i)) for i in host["indices"]]

    def _stack_views(self, views: list[torch.Tensor]) -> torch.Tensor:
        """V' tensors (N, 3, C*F, H, W) -> (N, C*V', 3, F, H, W), clips-major."""
        n, channels, frames, h, w = views[0].shape
        clips, f = self.clip.num_test_clips, frames // self.clip.num_test_clips
        out = views[0].new_empty((n, clips, len(views), channels, f, h, w))
        for v, view in enumerate(views):
            out[:, :, v] = view.view(n, channels, clips, f, h, w).permute(0, 2, 1, 3, 4, 5)
        return out.view(n, clips * len(views), channels, f, h, w)


def _dali_reason(err: Exception) -> str:
    """The operator's own words from a DALI pipeline error, on one line."""
    text = str(err)
    found = re.search(r"encountered:\s*\n(.*?)(?:\nC\+\+ context|\nCurrent pipeline|$)", text, re.S)
    return " ".join((found.group(1) if found else text).split())[:400]


def _train_inputs(view: sampling.TrainView) -> dict[str, np.ndarray]:
    b = view.box
    inputs = {"box": np.array([b.y, b.x, b.y + b.h, b.x + b.w], np.float32), "flip": np.array(int(view.flip), np.int32)}
    if view.jitter is not None:
        j = view.jitter  # brightness goes to DALI as a fraction of the 0-255 range
        inputs["jitter"] = np.array([j.hue, j.saturation, j.contrast, j.brightness / 255.0], np.float32)
    return inputs


def _test_positions(spec: ClipSpec, height: int, width: int) -> np.ndarray:
    """(crops, 2) normalised (x, y) crop positions (unused by "full")."""
    return np.array(sampling.test_crop_positions(spec, height, width), np.float32)


def _as_torch(output) -> torch.Tensor:
    """A DALI TensorList -> torch tensor on the same device, without a copy."""
    tensor = output.as_tensor()
    if isinstance(output, TensorListGPU):
        with torch.cuda.device(torch.cuda.current_device()):
            return torch.from_dlpack(tensor)
    return torch.from_dlpack(tensor)
