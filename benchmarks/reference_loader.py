"""The baseline `pipeline.ClipLoader` is measured against: clip loading as peer toolkits do it.

torch DataLoader workers stream the same tar shards with the `webdataset`
library, decode with PyAV (seek to the keyframe before the clip, decode
forward, convert the wanted frames to RGB, as pytorchvideo / PySlowFast do)
and augment with torch ops (crop, bilinear resize, flip, normalise). Output
contract of the DALI loader in train mode: (N, 3, F, H, W) float32
normalised clips and int64 labels. Frames, crop boxes and flips come from the
same `pipeline.sampling` functions, so both loaders do the same work.

It exists only to be measured against (`python -m benchmarks.data`).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from torch.utils.data import DataLoader

from pipeline import ClipSpec, sampling
from pipeline.pyav import decode_frames

VIDEO_EXTS = ("webm", "mp4")


def augment(frames: np.ndarray, view: sampling.TrainView, spec: ClipSpec) -> torch.Tensor:
    """(F, H, W, 3) uint8 -> (3, F, S, S) float32: crop, resize, flip, jitter, normalise."""
    b = view.box
    x = torch.from_numpy(frames[:, b.y : b.y + b.h, b.x : b.x + b.w]).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(spec.crop_size, spec.crop_size), mode="bilinear", align_corners=False)
    if view.flip:
        x = x.flip(-1)
    if view.jitter is not None:
        x = jitter(x, view.jitter)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    return ((x - mean) / std).permute(1, 0, 2, 3).contiguous()


def jitter(x: torch.Tensor, j: sampling.Jitter) -> torch.Tensor:
    """Hue rotation about the grey axis, saturation, contrast about 128, brightness shift (0-255)."""
    grey = x.mean(dim=1, keepdim=True)
    angle = torch.tensor(j.hue * np.pi / 180)
    axis = torch.full((3,), 1 / np.sqrt(3))
    cross = torch.tensor([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = torch.cos(angle) * torch.eye(3) + torch.sin(angle) * cross + (1 - torch.cos(angle)) * torch.outer(axis, axis)
    x = torch.einsum("ij,fjhw->fihw", rot, x)
    x = grey + j.saturation * (x - grey)
    x = 128 + j.contrast * (x - 128) + j.brightness
    return x.clamp(0, 255)


def make_sample(sample: dict, spec: ClipSpec, seed: int, epoch: int) -> tuple[torch.Tensor, int]:
    """One webdataset sample dict -> (clip, label)."""
    meta = json.loads(sample["json"])
    video = next(sample[e] for e in VIDEO_EXTS if e in sample)
    count = int(np.frombuffer(sample["frames"], "<i4")[0])
    label = int(np.frombuffer(sample["lbl"], "<i4")[0])
    rng = sampling.sample_rng(seed, epoch, zlib.crc32(sample["__key__"].encode()))
    view = sampling.draw_train_view(spec, count, int(meta["height"]), int(meta["width"]), rng)
    if view.flip:
        label = sampling.flip_label(label, spec.flip_label_map)
    return augment(decode_frames(video, view.indices), view, spec), label


def reference_loader(
    shards: Sequence[str | Path], spec: ClipSpec, *, batch_size: int, workers: int,
    seed: int = 0, epoch: int = 0, shuffle: int = 64,
) -> DataLoader:
    """An endless DataLoader of training batches (shards drawn with replacement, the webdataset FAQ's DDP recipe)."""
    urls = [str(s) for s in shards]
    dataset = (
        wds.WebDataset(urls, resampled=True, shardshuffle=False, empty_check=False, seed=seed,
                       nodesplitter=wds.split_by_node, workersplitter=wds.split_by_worker)
        .shuffle(shuffle)
        .map(partial(make_sample, spec=spec, seed=seed, epoch=epoch))
    )
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=True,
                      persistent_workers=workers > 0)
