"""Tiny video fixtures for the shard / synth / verify tests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.shard.ffmpeg import find_ffmpeg, pipe_frames, raw_rgb_input, run_ffmpeg

# Small enough to keep every test quick on 2 cores; even, so the default encoder settings apply.
SMALL = {"short_side": 48, "workers": 2, "min_frames": 8}


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 25,
    vcodec: str = "libx264",
    pix_fmt: str = "yuv420p",
    extra: tuple[str, ...] = (),
) -> Path:
    """Encode (T, H, W, 3) uint8 frames to `path` (container from the extension)."""
    t, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        *raw_rgb_input(w, h, fps),
        "-c:v",
        vcodec,
        "-pix_fmt",
        pix_fmt,
        "-threads",
        "1",
        *extra,
        str(path),
    ]
    pipe_frames(argv, [frames.tobytes()], timeout=60)
    return path


def noise_frames(n: int, w: int, h: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish moving pattern: compresses well, never a flat frame."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    return np.stack([np.roll(base, 2 * t, axis=1) for t in range(n)])


def level_frames(n: int, w: int, h: int) -> np.ndarray:
    """Frame i is flat gray at level 20 + 8 i: a decoded frame's mean tells its index."""
    levels = (20 + 8 * np.arange(n)).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, h, w, 3)).copy()


def write_audio_only(path: Path) -> Path:
    argv = [
        find_ffmpeg(),
        "-hide_banner",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        "sine=d=0.5",
        "-c:a",
        "aac",
        str(path),
    ]
    run_ffmpeg(argv, timeout=60)
    return path


def manifest_without_run(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    m.pop("run")
    return m


def rejected(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "rejected.jsonl").read_text().splitlines() if line.strip()]


def shard_command(src: Path, out: Path, *options: str) -> list[str]:
    """`python -m pipeline.shard SRC --out OUT` at the tests' small settings (short side 48, 2 videos a shard)."""
    return [sys.executable, "-m", "pipeline.shard", str(src), "--out", str(out), "--short-side", "48",
            "--shard-samples", "2", "--no-progress", *options]  # fmt: skip


def kill_after_first_shard(cmd: list[str], out: Path, cwd: Path, timeout: float = 120) -> None:
    """Run `cmd`, SIGKILL it once its first shard is committed (the resume record lists it right after the
    rename), and check that it had not finished by then."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while not _committed_a_shard(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the run finished before it could be killed"


def _committed_a_shard(out: Path) -> bool:
    try:
        state = json.loads((out / ".shard-state.json").read_text())
    except (OSError, ValueError):  # not there yet, or read while being replaced
        return False
    return any(split["shards"] for split in state["splits"].values())


def write_anamorphic(path: Path, seconds: float, sar: str = "128/117", rotation: int = 0) -> Path:
    """ffmpeg's test pattern as 176x144 QCIF H.264 with 128:117 pixels (displayed about 4:3), as cameras of
    that format store it; with `rotation`, a display rotation (degrees counter-clockwise), as phones store
    a portrait video: the frames stored sideways, the container saying how to turn them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = path.with_name(f".stored-{path.name}") if rotation else path
    run_ffmpeg([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
                "-i", f"testsrc=size=176x144:rate=25:duration={seconds}", "-vf", f"setsar={sar}",
                "-c:v", "libx264", "-pix_fmt", "yuv420p", str(stored)], timeout=60)  # fmt: skip
    if rotation:
        run_ffmpeg([find_ffmpeg(), "-hide_banner", "-loglevel", "error", "-y", "-display_rotation", str(rotation),
                    "-i", str(stored), "-c", "copy", str(path)], timeout=60)  # fmt: skip
        stored.unlink()
    return path
