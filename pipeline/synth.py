"""`python -m pipeline.synth OUT`: a small action dataset that only motion can solve.

Each video shows a textured object sliding over a textured background. The
class is the motion: one of 4 directions x 2 speeds (8 classes). Everything a
single frame shows (object size, aspect, shape, colours, texture, position,
background) is drawn independently of the class, and the object wraps around
the frame edges, so its position says nothing about its direction either: a
model has to compare frames to tell classes apart.

Videos are real H.264 MP4 files in class-per-folder layout
(`OUT/{train,val}/<class>/<class>_0000.mp4`), encoded by the project's ffmpeg
with one thread and bit-exact flags: the same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from pipeline.cli import HelpFormatter
from pipeline.shard.ffmpeg import FFmpegError, parse_size, pipe_frames, raw_rgb_input
from pipeline.io.files import atomic_write_text

DIRECTIONS = {"right": (0, 1), "left": (0, -1), "down": (1, 0), "up": (-1, 0)}  # (dy, dx)
SPEEDS = {"slow": 0.012, "fast": 0.036}  # fraction of the frame's extent per frame
CLASS_NAMES = tuple(f"{d}_{s}" for s in SPEEDS for d in DIRECTIONS)
SPLIT_IDS = {"train": 0, "val": 1}
META = "synth.json"


@dataclass(frozen=True, kw_only=True)
class SynthConfig:
    classes: int = 8
    train_per_class: int = 24
    val_per_class: int = 8
    frames: int = 48
    size: tuple[int, int] = (160, 120)  # (W, H)
    fps: int = 25
    seed: int = 0
    # Camera-like grain: std (0-255) of fixed fine texture and of per-frame sensor noise. Smooth synthetic
    # frames compress far better than footage and flatter GOP decoding; benchmarks use grain > 0.
    grain: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(self.size))  # a list from JSON or a caller is the same size
        if not 2 <= self.classes <= len(CLASS_NAMES):
            raise ValueError(f"classes must be in 2..{len(CLASS_NAMES)}, got {self.classes}")
        w, h = self.size
        if w < 32 or h < 32 or w % 2 or h % 2:
            raise ValueError(f"size must be even and at least 32x32, got {w}x{h}")
        if self.grain < 0:
            raise ValueError(f"grain must be >= 0, got {self.grain}")
        if self.frames < 2 or self.fps < 1 or self.train_per_class < 0 or self.val_per_class < 0:
            raise ValueError("frames >= 2, fps >= 1 and non-negative video counts are required")

    @property
    def class_names(self) -> list[str]:
        return list(CLASS_NAMES[: self.classes])


def motion(class_name: str) -> tuple[int, int, float]:
    """(dy, dx, speed) of a class: unit direction and fraction of the frame per frame."""
    direction, speed = class_name.split("_")
    dy, dx = DIRECTIONS[direction]
    return dy, dx, SPEEDS[speed]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Colour noise on a coarse grid, bilinearly upsampled to (h, w, 3) in [0, 1]."""
    grid = rng.random((cells + 1, cells + 1, 3))
    wy = _interp_weights(h, cells + 1)
    wx = _interp_weights(w, cells + 1)
    return np.einsum("hy,yxc,wx->hwc", wy, grid, wx, optimize=True)


def _interp_weights(n: int, m: int) -> np.ndarray:
    """(n, m) matrix that linearly interpolates m samples to n."""
    pos = np.linspace(0, m - 1, n)
    lo = np.floor(pos).astype(int).clip(0, m - 2)
    frac = pos - lo
    weights = np.zeros((n, m))
    weights[np.arange(n), lo] = 1 - frac
    weights[np.arange(n), lo + 1] = frac
    return weights


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random oriented sinusoid in [-1, 1], shape (h, w, 1)."""
    theta = rng.uniform(0, np.pi)
    period = rng.uniform(4, 12)
    yy, xx = np.mgrid[0:h, 0:w]
    phase = (xx * np.cos(theta) + yy * np.sin(theta)) * 2 * np.pi / period
    return np.sin(phase + rng.uniform(0, 2 * np.pi))[..., None]


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = _smooth_noise(rng, h, w, cells=int(rng.integers(3, 7)))
    tint = rng.uniform(0.3, 1.0, size=3)
    img = base * tint * 0.8 + 0.1 + 0.08 * _stripes(rng, h, w)
    return np.clip(img, 0, 1)


def sprite(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A textured object of random size, aspect, shape and colours: (oh, ow, 3) texture and (oh, ow) mask."""
    side = rng.uniform(0.2, 0.35) * min(h, w)
    aspect = rng.uniform(0.7, 1.4)
    oh, ow = max(4, int(side * aspect)), max(4, int(side / aspect))
    yy, xx = np.mgrid[0:oh, 0:ow]
    if rng.random() < 0.5:
        inside = np.ones((oh, ow), bool)
    else:
        inside = ((yy - (oh - 1) / 2) / (oh / 2)) ** 2 + ((xx - (ow - 1) / 2) / (ow / 2)) ** 2 <= 1
    cell = int(rng.integers(2, 6))
    checker = ((yy // cell + xx // cell) % 2)[..., None]
    c1, c2 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    texture = np.where(checker == 1, c1, c2)
    return texture, inside


def render_video(
    class_name: str, rng: np.random.Generator, frames: int, size: tuple[int, int], grain: float = 0.0
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames: the sprite moves by `speed * extent` pixels per frame, wrapping.

    `grain` > 0 adds a fixed fine texture to the background and independent
    noise to every frame (both with that std), as camera footage has.
    """
    w, h = size
    dy, dx, speed = motion(class_name)
    bg = np.round(background(rng, h, w) * 255).astype(np.uint8)
    texture, inside = sprite(rng, h, w)
    texture = np.round(texture * 255).astype(np.uint8)
    oh, ow = inside.shape
    y0, x0 = rng.uniform(0, h), rng.uniform(0, w)
    t = np.arange(frames)
    ys = np.round(y0 + t * dy * speed * h).astype(int)
    xs = np.round(x0 + t * dx * speed * w).astype(int)
    # Wrapped pixel coordinates of the sprite in every frame: leaving one edge re-enters at the other.
    rows = ((ys[:, None] + np.arange(oh)) % h)[:, :, None]  # (T, oh, 1)
    cols = ((xs[:, None] + np.arange(ow)) % w)[:, None, :]  # (T, 1, ow)
    out = np.empty((frames, h, w, 3), np.uint8)
    out[:] = bg
    tt = t[:, None, None]
    out[tt, rows, cols] = np.where(inside[None, ..., None], texture[None], out[tt, rows, cols])
    if grain > 0:  # drawn last, so grain=0 videos are unchanged
        fine = rng.normal(0.0, grain, size=(h, w, 1))
        noisy = out + fine[None] + rng.normal(0.0, grain, size=out.shape).astype(np.float32)
        out = np.clip(np.round(noisy), 0, 255).astype(np.uint8)
    return out


def encode_argv(
    pattern: str, size: tuple[int, int], fps: int, frames: int, videos: int, exe: str | None = None
) -> list[str]:
    """ffmpeg command: raw RGB frames of `videos` clips on stdin -> one bit-exact H.264 MP4 per clip (pure).

    One process encodes a whole group of clips (the segment muxer cuts at
    forced keyframes every `frames` frames), because on small clips ffmpeg's
    start-up costs more than the encoding itself.
    """
    w, h = size
    cuts = ",".join(str(frames * k) for k in range(1, videos))
    split = ["-f", "segment", "-segment_frames", cuts, "-reset_timestamps", "1", "-segment_format", "mp4"]
    if videos == 1:
        split = ["-f", "mp4"]
    return [
        *raw_rgb_input(w, h, fps, exe),
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "16",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        "-force_key_frames",
        f"expr:eq(mod(n,{frames}),0)",
        "-map_metadata",
        "-1",
        "-fflags",
        "+bitexact",
        "-flags:v",
        "+bitexact",
        *split,
        pattern,
    ]


def video_plan(cfg: SynthConfig) -> list[tuple[str, str, int, str]]:
    """(split, class, index, relative path) of every video, in a fixed order."""
    plan = []
    for split, count in (("train", cfg.train_per_class), ("val", cfg.val_per_class)):
        for name in cfg.class_names:
            plan += [(split, name, i, f"{split}/{name}/{name}_{i:04d}.mp4") for i in range(count)]
    return plan


def _rng(cfg: SynthConfig, split: str, name: str, index: int) -> np.random.Generator:
    # One generator per video, keyed by its identity: output is independent of scheduling.
    return np.random.default_rng([cfg.seed, SPLIT_IDS[split], CLASS_NAMES.index(name), index])


def _make_group(out: Path, cfg: SynthConfig, group: list[tuple[str, str, int, str]]) -> None:
    """Render and encode the videos of one (split, class) through a temp folder, then move them in place."""
    split, name = group[0][0], group[0][1]
    tmp = out / f".tmp-synth-{split}-{name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        argv = encode_argv(str(tmp / "%04d.mp4"), cfg.size, cfg.fps, cfg.frames, len(group))
        clips = (
            render_video(name, _rng(cfg, *entry[:3]), cfg.frames, cfg.size, cfg.grain).tobytes() for entry in group
        )
        pipe_frames(argv, clips, timeout=600)
        if len(group) == 1:
            (tmp / "%04d.mp4").rename(tmp / "0000.mp4")
        for k, entry in enumerate(group):
            final = out / entry[3]
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / f"{k:04d}.mp4", final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _meta(cfg: SynthConfig) -> dict:
    return {"generator": "pipeline.synth", "config": {**asdict(cfg), "size": list(cfg.size)}}


def make_dataset(
    out: str | os.PathLike, config: SynthConfig | None = None, *, workers: int | None = None, **settings
) -> Path:
    """Write the synthetic dataset to `out` (class-per-folder, train and val) and return `out`.

    Takes a `SynthConfig`, or its fields as keywords (`classes=`, `frames=`, ...).
    If `out` already holds a complete dataset with the same settings it is
    reused as is, so tests and the demo can call this freely.
    """
    if config is not None and settings:
        raise TypeError("pass either a SynthConfig or its fields to make_dataset, not both")
    cfg = config if config is not None else SynthConfig(**settings)
    out = Path(out)
    plan = video_plan(cfg)
    meta_path = out / META
    if _is_complete(out, cfg, plan):
        return out
    _clear(out)
    groups: dict[tuple[str, str], list] = {}
    for entry in plan:
        groups.setdefault(entry[:2], []).append(entry)
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        # ffmpeg runs in its own process and numpy releases the GIL: threads keep the cores busy.
        for job in [pool.submit(_make_group, out, cfg, group) for group in groups.values()]:
            job.result()
    atomic_write_text(meta_path, json.dumps({**_meta(cfg), "videos": len(plan)}, indent=1) + "\n")
    return out


def _clear(out: Path) -> None:
    """Make `out` an empty place for a dataset; only ever deletes a previous synthetic dataset."""
    if out.exists() and any(out.iterdir()):
        if not (out / META).is_file() and not any(p.name.startswith(".tmp-synth-") for p in out.iterdir()):
            raise FileExistsError(f"{out} is not empty and holds no {META}; pick an empty or new folder")
        (out / META).unlink(missing_ok=True)  # first: an interrupted clear is never taken as complete
        for p in out.iterdir():
            if p.name in SPLIT_IDS or p.name.startswith(".tmp-synth-"):
                shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)


def _is_complete(out: Path, cfg: SynthConfig, plan: list) -> bool:
    try:
        meta = json.loads((out / META).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("config") == _meta(cfg)["config"] and all((out / rel).is_file() for *_, rel in plan)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.synth",
        description="Write a synthetic action dataset (class = direction x speed of a moving textured object) "
        "as H.264 MP4 files in OUT/{train,val}/<class>/. Deterministic for a seed; an existing complete "
        "dataset with the same settings is reused.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("out", type=Path, help="output folder")
    p.add_argument("--classes", type=int, default=8, help=f"number of classes (2..{len(CLASS_NAMES)})")
    p.add_argument("--train-per-class", "--videos-per-class", type=int, default=24, help="training videos per class")
    p.add_argument("--val-per-class", type=int, default=8, help="validation videos per class")
    p.add_argument("--frames", type=int, default=48, help="frames per video")
    p.add_argument("--size", type=parse_size, default=(160, 120), help="frame size WxH, even (default: 160x120)")
    p.add_argument("--fps", type=int, default=25, help="frame rate")
    p.add_argument("--seed", type=int, default=0, help="random seed; same seed, same files")
    p.add_argument(
        "--grain",
        type=float,
        default=0.0,
        help="camera-like texture and sensor noise (std on 0-255; 0 = smooth synthetic frames)",
    )
    p.add_argument("--workers", type=int, default=None, help="parallel encodes (default: all cores)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = SynthConfig(**{f.name: getattr(args, f.name) for f in fields(SynthConfig)})  # a flag per field
        out = make_dataset(args.out, cfg, workers=args.workers)
    except (ValueError, FFmpegError, OSError) as err:
        print(f"pipeline.synth: error: {err}", file=sys.stderr)
        return 1
    n = len(video_plan(cfg))
    print(f"wrote {n} videos ({args.classes} classes, {args.frames} frames, {args.size[0]}x{args.size[1]}) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
