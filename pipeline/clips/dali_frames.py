"""Frame shards (one JPEG per frame) through DALI: the GPU path, nvJPEG and GPU augmentation.

The host plans clips as for video, reads only the distinct sampled frames'
JPEGs, and DALI gets them as one flat batch of images: `fn.decoders.image`
decodes them (nvJPEG with the hardware JPEG decoder on a GPU through
`device="mixed"`, libjpeg-turbo on the CPU threads with decoder "cpu"), the
same resize / crop / flip / normalise follow per image, and the host
regroups the images into clips. Training clips come back in
`channels_last_3d` memory order (a view of DALI's NHWC output, no copy).

On a CPU the host path (`pipeline.clips.host`) does the same work faster;
decoder "cpu" keeps this graph for comparison and for GPU loaders that
decode on the CPU threads.
"""

from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from pipeline.clip import ClipSpec
from pipeline.clips.dali_graph import (
    DaliBackend,
    Feed,
    augment_test,
    augment_train,
    dali_reason,
    view_inputs,
)
from pipeline.errors import VERIFY_HINT, DataError
from pipeline.format.jpeg import JpegError, decode_check
from pipeline.options import HW_DECODER_LOAD, Mode


def frame_feed_fields(mode: Mode, spec: ClipSpec) -> tuple[str, ...]:
    """Per-image inputs of the frame-shard graph, in `external_source` output order."""
    if mode == "train":
        return ("jpeg", "box", "flip") + (("jitter",) if spec.color_jitter else ())
    return ("jpeg",) + (() if spec.test_crops == "full" else ("positions",))


@pipeline_def(exec_dynamic=True)
def frame_pipeline(
    next_batch, mode: Mode, spec: ClipSpec, device: str, decoder: str = "cpu", hw_decoder_load: float = HW_DECODER_LOAD
):
    """A flat batch of JPEGs (every frame of every clip) -> augmented images.

    Each image carries its clip's plan (the same box, flip and jitter for all
    frames of a clip). Outputs: train, one (images, H, W, 3) float tensor;
    test, one such tensor per spatial view (crop, flip).
    """
    fields = frame_feed_fields(mode, spec)
    feed = dict(
        zip(fields, fn.external_source(source=next_batch, batch=True, batch_info=True, num_outputs=len(fields)))
    )
    if decoder == "nvjpeg":
        x = fn.decoders.image(feed["jpeg"], device="mixed", output_type=types.RGB, hw_decoder_load=hw_decoder_load)
    else:
        x = fn.decoders.image(feed["jpeg"], device="cpu", output_type=types.RGB)
        x = x.gpu() if device == "gpu" else x
    views = augment_train(x, feed, spec, "HWC") if mode == "train" else augment_test(x, feed, spec, "HWC")
    return tuple(views)


class DaliFrames(DaliBackend):
    """Frame-shard batches through DALI (see the module docstring)."""

    def __init__(self, *args, hw_decoder_load: float = HW_DECODER_LOAD, **kwargs):
        super().__init__(*args, **kwargs)
        self.hw_decoder_load = hw_decoder_load

    def prepare(self, indices: np.ndarray, epoch: int) -> tuple[tuple, dict]:
        """Per-image DALI inputs, and the host's regrouping plan.

        Each sample contributes its distinct sampled frames (read by offset, no
        other bytes); `gather[n]` maps clip position -> image number in the batch.
        """
        fields = frame_feed_fields(self.mode, self.spec)
        inputs: dict[str, list[np.ndarray]] = {f: [] for f in fields}
        plans = [self.plan(int(i), epoch) for i in indices]
        decode = [p.decode_plan() for p in plans]
        images = self.data.frame_bytes_many([(p.index, u) for p, (u, _) in zip(plans, decode)])  # one batch of reads
        gather = []
        for plan, (_, order), jpegs in zip(plans, decode, images):
            gather.append(len(inputs["jpeg"]) + order)
            inputs["jpeg"] += [np.frombuffer(b, dtype=np.uint8) for b in jpegs]
            extra = view_inputs(plan)
            for name in fields[1:]:
                inputs[name] += [extra[name]] * len(jpegs)
        host = {
            "labels": np.array([p.label for p in plans], np.int64),
            "indices": np.array(indices, np.int64),
            "gather": np.stack(gather),
        }
        return tuple(inputs[f] for f in fields), host

    def build(self, feed: Feed):
        # One DALI sample per image: a batch holds every distinct frame of its clips.
        per_sample = self.spec.frames * (1 if self.mode == "train" else self.spec.num_test_clips)
        return frame_pipeline(
            feed,
            self.mode,
            self.spec,
            self.device,
            self.decoder,
            self.hw_decoder_load,
            **self.pipeline_args(self.batch_size * per_sample),
        )

    def to_torch(self, views: list[torch.Tensor], host: dict) -> torch.Tensor:
        """Per-image outputs (images, H, W, 3) -> clips, regrouped on the host's plan."""
        device = views[0].device
        order = host["gather"]  # (N, C*F) image number of every clip position
        n, f = order.shape[0], self.spec.frames
        if self.mode == "train":
            x = views[0]  # (images, H, W, 3); already in clip order unless a short video repeats frames
            if not np.array_equal(order.ravel(), np.arange(order.size)):
                x = x[torch.from_numpy(order.ravel()).to(device)]
            return x.view(n, f, *x.shape[1:]).permute(0, 4, 1, 2, 3)  # (N, 3, F, H, W), channels_last_3d
        c = self.spec.num_test_clips
        gather = torch.from_numpy(order).to(device)
        per_view = [v[gather].view(n, c, f, *v.shape[1:]).permute(0, 1, 5, 2, 3, 4) for v in views]
        return torch.stack(per_view, dim=2).flatten(1, 2)  # (N, C*V', 3, F, H, W), clips-major

    def decode_error(self, err: Exception, candidates: list[int], epoch: int) -> DataError:
        """Name the frame(s) that do not decode, by decoding each sampled JPEG on the host."""
        bad = []
        for index in candidates:
            unique, _ = self.plan(index, epoch).decode_plan()
            for frame, image in zip(unique, self.data.frame_bytes(index, unique)):
                try:
                    decode_check(image)
                except JpegError as reason:
                    bad.append((index, int(frame), str(reason)))
        if not bad:
            return DataError(f"DALI failed on a batch of frames it could not name: {dali_reason(err)}")
        names = "; ".join(f"{self.data.where(i)}, frame {f} ({why})" for i, f, why in bad[:8])
        return DataError(
            f"could not decode {names}{' ...' if len(bad) > 8 else ''}. DALI aborts the whole pipeline on a "
            "corrupt frame; " + VERIFY_HINT.format(dir=self.data.folder(bad[0][0]))
        )
