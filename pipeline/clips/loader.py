"""`ClipLoader`: WebDataset shards -> decoded, augmented clips as torch batches.

The loader decides *what* every batch holds: sample order, frame indices,
crop boxes, flips and jitter are pure functions of (seed, epoch, sample)
(`pipeline.clips.batching`, `pipeline.clips.sampling`, `pipeline.clips.plan`). A backend,
chosen by the shards' kind, the device and the decoder
(`pipeline.options`), does the work:

* `pipeline.clips.host`: either kind on a CPU (the default there): libjpeg-turbo
  or PyAV decodes, OpenCV augments, in host threads;
* `pipeline.clips.dali_frames`: frame shards through DALI (nvJPEG on a GPU);
* `pipeline.clips.dali_video`: video shards through DALI (libavcodec, NVDEC, or
  PyAV-decoded frames).

DALI is imported only when a DALI backend is chosen (or a GPU loader is
asked for), so the host path runs where DALI is not installed.

Every backend reads a sample's bytes straight out of the tar by its `.idx`
offset (`pipeline.format.shardset`), rather than streaming the tars in order. That
buys three things the trainer relies on: an epoch is a true permutation of
all samples, batch k of epoch e can be produced without decoding batches
0..k-1 (exact mid-epoch resume), and test mode sees every sample exactly
once with no reader padding to strip. Reading is done ahead: a background
thread plans the next batches and reads their bytes while the current ones
decode.

Test-mode views come back as (N, V, 3, F, H, W) with V ordered clips-major,
then spatial crops (left/top, centre, right/bottom), then flips (unflipped
first): view = (clip * crops + crop) * flips + flip.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from pipeline.clip import ClipSpec
from pipeline.clips import batching
from pipeline.clips.host import HostClips
from pipeline.clips.plan import SamplePlan, plan_sample
from pipeline.format.shardset import ShardSet
from pipeline.options import (
    DALI_DECODERS,
    GPU_EXTRA_HINT,
    HW_DECODER_LOAD,
    LOADER_DEVICES,
    Decoder,
    Device,
    Mode,
    resolve_decoder,
)


class ClipLoader:
    """Batches of clips from WebDataset shards (video or JPEG frames), decoded and augmented.

    shards: a shard directory (all `*.tar`, or `<split>-*.tar` with `split`)
        or a list of tar paths, each with its `.idx` beside it. The format
        (video or frame shards) is read from the shards themselves.
    clip: what the model wants (`tpn.get_config(name).clip`).
    mode: "train" yields (N, 3, F, H, W) float32 normalised clips and int64
        labels, last partial batch dropped, the same batch count on every rank;
        "test" yields (N, V, 3, F, H, W) with V = clip.num_test_views (see the
        module docstring for the view order), every sample once over all ranks.
    device: "gpu" (or "cuda") augments on the GPU and returns CUDA tensors;
        "cpu" returns CPU tensors; "auto" picks the GPU when torch and DALI
        see one (without DALI installed, the CPU).
    decoder: which backend decodes (`pipeline.options` has the table).
        Frame shards: "auto" is "host" on a CPU (libjpeg-turbo + OpenCV in
        host threads) and "nvjpeg" on a GPU; "cpu" decodes with DALI on its
        CPU threads. Video shards: on the GPU, "nvdec" decodes with NVDEC
        and "cpu" decodes VP9 on the CPU threads, then augments on the GPU;
        "auto" picks "cpu" for VP9 and "nvdec" for H.264; on device "cpu"
        DALI decodes on the CPU. "pyav" (either device, any codec
        libavcodec reads) decodes the sampled frames with PyAV in
        `num_threads` host threads and hands DALI raw frames. Every decoder
        but "host" runs DALI (the `[gpu]` extra).
    seed: with the epoch (`set_epoch`) it fixes every batch bit for bit.
    rank, world_size: default to torch.distributed's when initialised.
    return_keys: also yield the list of sample keys of each batch.
    num_threads: decoding threads (DALI's or the host's; default: the CPUs this process may use).
    prefetch: batches prepared ahead (the host reads one more).
    max_open: shards kept open at once (default from the descriptor limit).
    hw_decoder_load: frame shards on a GPU: share of the JPEGs nvJPEG sends
        to the hardware JPEG decoder (the rest decode on CUDA cores).

    Bad shards raise at construction (FileNotFoundError, `ShardReadError`,
    ValueError for H.264 on CPU, ImportError naming the extra for a DALI
    decoder without DALI); a video or frame that does not decode raises
    `DataError` during iteration, naming its shard, key (and frame).
    Open files are released by `close()`, `with ClipLoader(...) as loader:`
    or garbage collection.

    A yielded batch is the caller's, whatever the backend: nothing writes it
    again once it is yielded, so batches may be kept (the host backend reuses
    a batch's memory only once nothing refers to it; DALI does not reuse an
    output buffer a tensor still refers to).
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
        self.return_keys, self.prefetch = return_keys, prefetch
        self.num_threads = num_threads or len(os.sched_getaffinity(0))
        self.device = resolve_loader_device(device)
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.data = ShardSet.open(shards, split, max_open=max_open)
        self._num_samples = len(self.data)
        self.decoder = resolve_decoder(decoder, self.device, self.data.codec)
        self._check_codec()
        self._check_length()
        self._backend = self._make_backend(hw_decoder_load)
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
        return batching.num_eval_batches(n, self.batch_size, self.rank, self.world_size)

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
        batches = self.batch_indices(epoch)[start:]
        if len(batches) == 0:
            return
        for clips, labels, indices in self._backend.batches(batches, epoch):
            if not self.return_keys:
                yield clips, labels
            else:
                yield clips, labels, [self.data.key(int(i)) for i in indices]

    def plan(self, index: int, epoch: int) -> SamplePlan:
        """What sample `index` contributes in `epoch`: label, frames and view (the same for every backend)."""
        data = self.data
        return plan_sample(
            self.clip,
            self.mode,
            self.seed,
            epoch,
            index,
            data.frame_count(index),
            data.frame_size(index),
            data.label(index),
        )

    def batch_indices(self, epoch: int) -> Sequence:
        """The sample indices of every batch of `epoch` on this rank, in order (a pure function of seed and epoch)."""
        n = len(self.data)
        if self.mode == "train":
            return batching.train_batches(n, self.batch_size, self.seed, epoch, self.rank, self.world_size)
        return [batching.eval_batch(n, self.batch_size, b, self.rank, self.world_size) for b in range(len(self))]

    # -- internals

    def _make_backend(self, hw_decoder_load: float):
        common = {"num_threads": self.num_threads, "prefetch": self.prefetch, "device": self.device}
        args = (self.data, self.clip, self.mode, self.plan)
        if self.decoder == "host":
            return HostClips(*args, **common)
        dali = {**common, "decoder": self.decoder, "seed": self.seed, "batch_size": self.batch_size}
        if self.data.is_frames:
            return _dali_backend("dali_frames", "DaliFrames")(*args, hw_decoder_load=hw_decoder_load, **dali)
        return _dali_backend("dali_video", "DaliVideo")(*args, **dali)

    def _check_codec(self) -> None:
        if self.data.codec == "h264" and self.decoder == "cpu":
            folder = self.data.tars[0].parent
            raise ValueError(
                f"the shards in {folder} hold H.264 video, which DALI cannot decode on the CPU "
                "(its CPU decoder handles VP9/VP8/MJPEG only; H.264 needs NVDEC on a GPU). "
                "Use decoder='host' or 'auto' (PyAV decodes it on the host), device='gpu' with NVDEC, "
                "or re-shard as VP9: `python -m pipeline.shard SRC --out OUT --codec vp9`"
            )

    def _check_length(self) -> None:
        if len(self) == 0:
            raise ValueError(
                f"{len(self.data)} samples give no full batch of {self.batch_size} on each of "
                f"{self.world_size} rank(s) in train mode: lower batch_size or add data"
            )


def resolve_loader_device(device: Device) -> str:
    """Where the loader runs: "gpu" or "cpu". 'auto' -> 'gpu' when torch and DALI both see a CUDA device.

    DALI is asked only when torch sees a GPU and the device is not "cpu".
    """
    if device not in LOADER_DEVICES:
        raise ValueError(f"device must be 'auto', 'cpu', 'gpu' or 'cuda' (the same as 'gpu'), got {device!r}")
    if device == "cpu":
        return "cpu"
    has_gpu = torch.cuda.is_available() and dali_gpu_count() > 0
    if device in ("gpu", "cuda") and not has_gpu:
        raise RuntimeError(
            f"device={device!r} but torch and DALI see no CUDA GPU: use device='cpu' (VP9 shards) or device='auto'"
        )
    return "gpu" if has_gpu else "cpu"


def dali_gpu_count() -> int:
    """The GPUs DALI sees (0 when DALI is not installed)."""
    try:
        from pipeline.clips.dali_graph import gpu_count
    except ImportError:
        return 0
    return gpu_count()


def _dali_backend(module: str, name: str):
    """A DALI backend class, imported now that it is chosen; a clear error when DALI is not installed."""
    try:
        imported = importlib.import_module(f"pipeline.clips.{module}")
    except ImportError as err:
        if not (err.name or "").startswith("nvidia"):
            raise
        raise ImportError(
            f"decoders {', '.join(map(repr, DALI_DECODERS))} run NVIDIA DALI, which is not installed: "
            f"{GPU_EXTRA_HINT}; or use decoder='host' (the CPU path)"
        ) from None
    return getattr(imported, name)


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
