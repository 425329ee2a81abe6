"""Tiny VP9 (or JPEG frame) shards whose frames say what they are, for the clip loader tests.

"Coded" videos paint frame i in one flat colour that spells i (red = 16 * (i % 16) + 8,
green = 16 * (i // 16) + 8), which survives lossy coding, resizing and cropping, so every
returned frame can be mapped back to its index. "Gradient" videos ramp red along x and
green along y, so a crop's mean colour tells where it was taken and whether it was flipped.
"""

import subprocess
from pathlib import Path

import numpy as np
import torch

from pipeline import ClipSpec
from pipeline.shard.ffmpeg import raw_rgb_input
from pipeline.shard import shard_dataset

# class -> frame counts; 9, 12 and 23 are shorter than some clip spans below
CODED = {"a": [70, 40, 23], "b": [64, 9, 33], "c": [50, 12]}
SIZE = (64, 48)  # W, H
SMALL = ClipSpec(frames=4, stride=3, crop_size=32, test_scale=48, test_crop=48, test_clips=3)


def coded_frames(n: int, size=SIZE) -> np.ndarray:
    i = np.arange(n)
    frames = np.full((n, size[1], size[0], 3), 128, np.uint8)
    frames[..., 0] = (16 * (i % 16) + 8)[:, None, None]
    frames[..., 1] = (16 * (i // 16) + 8)[:, None, None]
    return frames


def gradient_frames(n: int, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    frames = np.full((n, h, w, 3), 128, np.uint8)
    frames[..., 0] = np.round(np.linspace(0, 255, w))[None, None, :]
    frames[..., 1] = np.round(np.linspace(0, 255, h))[None, :, None]
    return frames


def to_rgb(clips: torch.Tensor, spec: ClipSpec) -> torch.Tensor:
    """Undo the normalisation of (..., 3, F, H, W) clips -> 0-255 RGB."""
    shape = (3, 1, 1, 1)
    return clips * torch.tensor(spec.std).view(shape) + torch.tensor(spec.mean).view(shape)


def frame_codes(clips: torch.Tensor, spec: ClipSpec) -> np.ndarray:
    """(..., 3, F, H, W) normalised coded clips -> (..., F) frame indices."""
    rgb = to_rgb(clips, spec).mean(dim=(-1, -2))  # (..., 3, F)
    r = torch.round((rgb[..., 0, :] - 8) / 16)
    g = torch.round((rgb[..., 1, :] - 8) / 16)
    return (r + 16 * g).long().numpy()


def source_argv(dst: Path, width: int, height: int) -> list[str]:
    """Near-lossless H.264 source from raw RGB on stdin (pipeline.shard re-encodes it to VP9)."""
    return [
        *raw_rgb_input(width, height, 25),
        "-c:v",
        "libx264",
        "-crf",
        "4",
        "-pix_fmt",
        "yuv420p",
        str(dst),
    ]


def write_source(dst: Path, frames: np.ndarray) -> None:
    _, h, w, _ = frames.shape
    subprocess.run(source_argv(dst, w, h), input=frames.tobytes(), check=True, timeout=60)


def make_shards(tmp: Path, videos: dict[str, list[tuple[str, np.ndarray]]], **kw) -> Path:
    src, out = tmp / "src", tmp / "shards"
    for cls, items in videos.items():
        (src / cls).mkdir(parents=True)
        for name, frames in items:
            write_source(src / cls / f"{name}.mp4", frames)
    shard_dataset(src, out, short_side=None, workers=1, **kw)
    return out


def coded_shards(out: Path, codec: str = "vp9") -> Path:
    """Video shards (`codec` "vp9") or frame shards ("jpeg") of the CODED videos, three per shard."""
    videos = {c: [(f"{c}{j}_{n}", coded_frames(n)) for j, n in enumerate(ns)] for c, ns in CODED.items()}
    return make_shards(out, videos, shard_samples=3, codec=codec)


def gradient_shards(out: Path, codec: str = "vp9") -> Path:
    videos = {"wide": [("wide", gradient_frames(12, (96, 64)))], "tall": [("tall", gradient_frames(12, (64, 96)))]}
    return make_shards(out, videos, codec=codec)
