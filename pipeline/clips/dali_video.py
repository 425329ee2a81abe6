"""Video shards (VP9 / H.264) through DALI: one encoded video per sample, its sampled frames decoded once.

The host reads each sample's encoded video straight out of the tar by its
`.idx` offset and hands DALI the bytes with the distinct frames to decode
(`pipeline.clips.sampling.decode_plan`). `fn.decoders.video` decodes them (NVDEC
through `device="mixed"`, or libavcodec on the CPU threads); with decoder
"pyav" the host decodes them instead (PyAV in `num_threads` threads, any
codec libavcodec reads) and DALI gets raw frames. Resize, crop, jitter,
frame order, flip and normalise follow on the loader's device.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import av
import numpy as np
import torch
from nvidia.dali import fn, pipeline_def

from pipeline.clip import ClipSpec
from pipeline.clips.dali_graph import (
    DaliBackend,
    Feed,
    augment_test,
    augment_train,
    dali_reason,
    device_id,
    view_inputs,
)
from pipeline.errors import VERIFY_HINT, DataError
from pipeline.options import Mode
from pipeline.clips.pyav import decode_frames


def feed_fields(mode: Mode, spec: ClipSpec, decoder: str = "cpu") -> tuple[str, ...]:
    """Per-sample inputs the host hands DALI, in `external_source` output order."""
    frames = () if decoder == "pyav" else ("frames",)  # PyAV frames arrive decoded
    common = ("video", *frames, "order")
    if mode == "train":
        return common + ("box", "flip") + (("jitter",) if spec.color_jitter else ())
    return common + (() if spec.test_crops == "full" else ("positions",))


@pipeline_def(exec_dynamic=True)
def clip_pipeline(next_batch, mode: Mode, spec: ClipSpec, device: str, decoder: str = "nvdec"):
    """The video graph; train and test differ only by `mode`.

    `next_batch` is a batch-mode callable returning one list per `feed_fields`
    entry. On device "gpu", `decoder` "nvdec" decodes on the GPU and "cpu"
    decodes with libavcodec and moves the frames to the GPU for the rest.
    Outputs: one (N, 3, C*F, H, W) float tensor per spatial view (C temporal
    clips in a row).
    """
    fields = feed_fields(mode, spec, decoder)
    feed = dict(
        zip(fields, fn.external_source(source=next_batch, batch=True, batch_info=True, num_outputs=len(fields)))
    )
    nvdec = device == "gpu" and decoder == "nvdec"
    if decoder == "pyav":  # the host already decoded the frames (F, H, W, 3)
        x = fn.reshape(feed["video"], layout="FHWC")
    else:
        # pad_mode="none": a frame count that disagrees with the video is an error, not black frames.
        where = {"device": "mixed", "affine": False} if nvdec else {"device": "cpu"}
        x = fn.decoders.video(feed["video"], frames=feed["frames"], pad_mode="none", **where)
    if device == "gpu" and not nvdec:
        x = x.gpu()
    return tuple(augment_train(x, feed, spec) if mode == "train" else augment_test(x, feed, spec))


@pipeline_def
def decode_probe(next_batch, nvdec: bool):
    """Decode one sample alone: how a failed batch is narrowed down to the bad video."""
    video, frames = fn.external_source(source=next_batch, num_outputs=2, batch=True)
    return fn.decoders.video(video, frames=frames, pad_mode="none", device="mixed" if nvdec else "cpu")


class DaliVideo(DaliBackend):
    """Video-shard batches through DALI (see the module docstring)."""

    def batches(self, batches: Sequence[np.ndarray], epoch: int):
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="pyav") if self.decoder == "pyav" else None
        try:
            yield from super().batches(batches, epoch)
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def prepare(self, indices: np.ndarray, epoch: int) -> tuple[tuple, dict]:
        indices = [int(i) for i in indices]
        videos = self.data.videos(indices)  # one batch of reads (concurrent for remote shards)
        rows = list(
            self._pool.map(lambda iv: self._row(*iv, epoch), zip(indices, videos))
            if self._pool
            else (self._row(i, v, epoch) for i, v in zip(indices, videos))
        )
        fields = feed_fields(self.mode, self.spec, self.decoder)
        host = {"labels": np.array([r["label"] for r in rows], np.int64), "indices": np.array(indices, np.int64)}
        return tuple([row[f] for row in rows] for f in fields), host

    def _row(self, index: int, video: np.ndarray, epoch: int) -> dict:
        """One sample's inputs to DALI (see `feed_fields`): bytes (or PyAV's frames), frames and view plan."""
        plan = self.plan(index, epoch)
        frames, order = plan.decode_plan()
        if self.decoder == "pyav":
            video = self._pyav_frames(index, video, frames)
        return {"video": video, "label": plan.label, "frames": frames, "order": order, **view_inputs(plan)}

    def _pyav_frames(self, index: int, video: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """The sampled frames (len(frames), H, W, 3), or a DataError naming the sample."""
        try:
            return decode_frames(video, frames)
        except (av.FFmpegError, ValueError, IndexError) as err:
            raise DataError(
                f"PyAV could not decode {self.data.where(index)}: {err}. "
                + VERIFY_HINT.format(dir=self.data.folder(index))
            ) from err

    def build(self, feed: Feed):
        return clip_pipeline(
            feed, self.mode, self.spec, self.device, self.decoder, **self.pipeline_args(self.batch_size)
        )

    def to_torch(self, views: list[torch.Tensor], host: dict) -> torch.Tensor:
        if self.mode == "train":
            return views[0]
        return self._stack_views(views)

    def _stack_views(self, views: list[torch.Tensor]) -> torch.Tensor:
        """V' tensors (N, 3, C*F, H, W) -> (N, C*V', 3, F, H, W), clips-major."""
        n, channels, frames, h, w = views[0].shape
        clips, f = self.spec.num_test_clips, frames // self.spec.num_test_clips
        out = views[0].new_empty((n, clips, len(views), channels, f, h, w))
        for v, view in enumerate(views):
            out[:, :, v] = view.view(n, channels, clips, f, h, w).permute(0, 2, 1, 3, 4, 5)
        return out.view(n, clips * len(views), channels, f, h, w)

    def decode_error(self, err: Exception, candidates: list[int], epoch: int) -> DataError:
        """Name the sample(s) DALI failed on, by re-decoding each candidate alone."""
        bad = [i for i in candidates if not self._decodes(i, epoch)] or candidates
        names = "; ".join(self.data.where(i) for i in bad[:8]) + (" ..." if len(bad) > 8 else "")
        return DataError(
            f"DALI could not decode {names}: {dali_reason(err)}. DALI aborts the whole pipeline "
            "on a corrupt video; " + VERIFY_HINT.format(dir=self.data.folder(bad[0]))
        )

    def _decodes(self, index: int, epoch: int) -> bool:
        """Whether one sample decodes alone with the frames the loader asks of it."""
        video, (frames, _) = self.data.video(index), self.plan(index, epoch).decode_plan()
        probe = decode_probe(
            lambda: ([video], [frames]),
            nvdec=self.decoder == "nvdec",
            batch_size=1,
            num_threads=1,
            device_id=device_id(self.device),
        )
        try:
            probe.build()
            probe.run()
            return True
        except RuntimeError:
            return False
