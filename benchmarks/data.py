"""`python -m benchmarks.data`: clip loading speed, DALI loader vs reference loader vs decode limit.

For 8x8, 16x4 and 32x2 training clips at 224 it measures, on the same shards
and cores, in interleaved rounds (medians reported):

* clips/s of `pipeline.ClipLoader` on VP9 video shards ("dali") and on JPEG
  frame shards of the same videos ("frames"), device="cpu" (or "gpu" with
  --loader-device gpu), and of `benchmarks.reference_loader` (PyAV in DataLoader
  workers, VP9);
* bytes read per clip (the video member for VP9, the sampled frames' JPEGs
  for frame shards) and shard bytes per video of both formats;
* CPU milliseconds per clip of each (all threads and worker processes);
* frames decoded per clip: from the keyframe at or before a clip's first
  frame through its last frame (both loaders decode exactly that);
* the decode limit: ffmpeg's decoder frames per CPU-second on the same
  videos (single-threaded ffmpegs, one per core), times the cores, divided
  by frames decoded per clip: the clips/s the cores could feed if they did
  nothing but decode.

Wall-clock clips/s depends on what else the machine runs; CPU time per clip
does much less, so the goals (DALI >= 1.0x the reference and >= 70%
of the decode limit) are judged both ways: "wall" from measured clips/s,
"cpu" from cores / CPU time per clip (what the loader reaches with the cores
to itself). Results go to benchmarks/results/data[_tiny].json and .png.
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks.common import endless, results_path, save_figure, thread_schedstats, tree_cpu_seconds, write_results
from pipeline import ClipSpec, sampling
from pipeline.cli import add_loader_device_arg
from pipeline.shardset import ShardSet

CONFIGS = {"8x8": (8, 8), "16x4": (16, 4), "32x2": (32, 2)}


@dataclass(frozen=True)
class Settings:
    data: Path
    tiny: bool = False
    configs: tuple[str, ...] = tuple(CONFIGS)
    batch_size: int = 8
    batches: int = 10  # timed; after the warm-up they fit in one epoch of the default data (see `measure`)
    rounds: int = 3
    workers: int = len(os.sched_getaffinity(0))
    device: str = "cpu"

    @property
    def dataset(self) -> dict:
        """make_dataset arguments: long enough for 32x2 (span 63), 320x240 like the seed's K400 copy.

        Camera-like grain: smooth synthetic frames compress far better than footage and make
        GOP decoding look cheap, which would flatter the VP9 rows.
        """
        if self.tiny:
            return {"classes": 4, "train_per_class": 2, "frames": 64, "size": (160, 120), "grain": 6.0}
        return {"classes": 8, "train_per_class": 16, "frames": 96, "size": (320, 240), "grain": 6.0}


# ----------------------------------------------------------------------------- data


def default_data_dir(tiny: bool = False) -> Path:
    """Where the benchmarks cache their synthetic videos and shards (one cache for all of them)."""
    return Path(tempfile.gettempdir()) / ("tpn-bench-data-tiny" if tiny else "tpn-bench-data-grain")


def bench_shards(s: Settings, codec: str = "vp9") -> Path:
    """Synthetic videos sharded as `codec` (cached in s.data; the sharder resumes or reuses a finished set)."""
    from pipeline.shard import shard_dataset
    from pipeline.synth import make_dataset

    src = make_dataset(s.data / "src", val_per_class=0, **s.dataset)
    out = s.data / f"shards-{codec}"
    shard_dataset(src, out, codec=codec, short_side=None, shard_samples=4 if s.tiny else 8, workers=s.workers,
                  overwrite=True)  # a private cache: re-made when the settings change
    return out


def bytes_per_clip(data: ShardSet, spec: ClipSpec, epochs: int = 2) -> float:
    """Mean bytes a loader reads for one training clip: the whole video, or the sampled frames' JPEGs."""
    total, clips = 0, 0
    for i in range(len(data)):
        h, w = data.frame_size(i)
        for epoch in range(epochs):
            if not data.is_frames:
                total += int(data.index.video_size[i])
            else:
                view = sampling.draw_train_view(spec, data.frame_count(i), h, w, sampling.sample_rng(0, epoch, i))
                start = int(data.index.frame_start[i])
                total += int(data.index.frame_size[start + np.unique(view.indices)].sum())
            clips += 1
    return total / clips


def shard_bytes_per_video(shards: Path) -> float:
    import json

    totals = json.loads((shards / "manifest.json").read_text())["totals"]
    return totals["bytes"] / totals["samples"]


def keyframes(video: bytes) -> np.ndarray:
    """Presentation indices of the keyframes of a CFR video (PyAV packet flags)."""
    import av

    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        fps, tb, start = stream.average_rate, stream.time_base, stream.start_time or 0
        keys = [round((p.pts - start) * tb * fps) for p in container.demux(stream) if p.is_keyframe and p.pts is not None]
    return np.array(sorted(keys))


def frames_decoded(indices: np.ndarray, keys: np.ndarray) -> int:
    """Frames a decoder must decode for `indices`: from the keyframe at/before the first to the last."""
    first, last = int(indices.min()), int(indices.max())
    start = int(keys[keys <= first].max()) if (keys <= first).any() else 0
    return last - start + 1


def mean_frames_decoded(data: ShardSet, spec: ClipSpec, epochs: int = 4) -> float:
    """Average frames decoded per training clip over every sample and a few epochs."""
    counts = []
    for i in range(len(data)):
        keys = keyframes(bytes(data.member(i, "video")))
        meta = data.meta(i)
        for epoch in range(epochs):
            view = sampling.draw_train_view(spec, data.frame_count(i), meta["height"], meta["width"],
                                            sampling.sample_rng(0, epoch, i))
            counts.append(frames_decoded(view.indices, keys))
    return float(np.mean(counts))


# ----------------------------------------------------------------------------- decode limit


def ffmpeg_decode_argv(ffmpeg: str, concat_list: Path) -> list[str]:
    """Decode every video of a concat list with one decoder thread and discard the frames."""
    return [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "1",
            "-f", "concat", "-safe", "0", "-i", str(concat_list), "-map", "0:v:0", "-f", "null", "-"]


def decode_limit_fps(data: ShardSet, workers: int, rounds: int) -> dict:
    """ffmpeg decoder frames/s over all the shards' videos: per CPU-second, and wall with `workers` ffmpegs."""
    from pipeline.ffmpeg import find_ffmpeg

    with tempfile.TemporaryDirectory() as tmp:
        lists = [Path(tmp, f"part{w}.txt") for w in range(workers)]
        parts: list[list[str]] = [[] for _ in lists]
        for i in range(len(data)):
            path = Path(tmp, f"{i}.{data.video_ext}")
            path.write_bytes(bytes(data.member(i, "video")))
            parts[i % workers].append(f"file '{path}'")
        for lst, lines in zip(lists, parts):
            lst.write_text("\n".join(lines) + "\n")
        frames = sum(data.frame_count(i) for i in range(len(data)))
        argvs = [ffmpeg_decode_argv(find_ffmpeg(), lst) for lst in lists]
        wall, per_cpu = [], []
        for _ in range(rounds):
            cpu0, t0 = _children_cpu(), time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(lambda a: subprocess.run(a, check=True, timeout=600), argvs))
            wall.append(frames / (time.perf_counter() - t0))
            per_cpu.append(frames / (_children_cpu() - cpu0))
    return {"frames_per_s_wall": statistics.median(wall), "frames_per_cpu_s": statistics.median(per_cpu)}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- loaders


def dali_batches(shards: Path, spec: ClipSpec, s: Settings):
    """ClipLoader batches forever (the shards decide the format: VP9 video or JPEG frames)."""
    from pipeline import ClipLoader

    loader = ClipLoader(shards, spec, batch_size=s.batch_size, device=s.device, num_threads=s.workers)
    yield from endless(loader)


def reference_batches(shards: Path, spec: ClipSpec, s: Settings):
    from benchmarks.reference_loader import reference_loader

    tars = sorted(shards.glob("*.tar"))
    yield from reference_loader(tars, spec, batch_size=s.batch_size, workers=s.workers)


def is_worker(who: str, key: tuple[int, int], name: str, in_child: bool) -> bool:
    """The threads that do a loader's work: DALI's thread pool, or the DataLoader workers' main threads."""
    return name.startswith("[DALI][TP") if who in ("dali", "frames") else in_child and key[0] == key[1]


def worker_time_split(before: dict, after: dict, who: str, wall: float) -> dict:
    """Share of the workers' time spent running, waiting for a CPU, and idle (nothing to do)."""
    run = wait = 0.0
    workers = 0
    for key, (name, in_child, r1, w1) in after.items():
        if key in before and is_worker(who, key, name, in_child):
            _, _, r0, w0 = before[key]
            run, wait, workers = run + (r1 - r0) / 1e9, wait + (w1 - w0) / 1e9, workers + 1
    if not workers:
        return {}
    span = wall * workers
    return {"worker_running": run / span, "worker_waiting_for_cpu": wait / span,
            "worker_idle": max(0.0, 1 - (run + wait) / span)}


def warmup_batches(who: str, workers: int) -> int:
    """Untimed batches: more than the loader can hold ready, so timing starts in the steady state.

    The DataLoader keeps prefetch_factor (2) batches per worker queued; DALI keeps its
    prefetch depth (2) decoded ahead (the host's read-ahead holds bytes only, not
    decoded batches). Timing right after a short warm-up would count queued batches
    as if they were produced in the timed window.
    """
    return (2 * workers if who == "reference" else DALI_PREFETCH) + 2


DALI_PREFETCH = 2  # ClipLoader's default prefetch depth


def measure(batches, who: str, s: Settings, warmup: int = 2, epoch_batches: int | None = None) -> dict:
    """clips/s, CPU ms per clip and the workers' time split over `s.batches` batches after `warmup`.

    Every round starts a fresh loader at epoch 0. When warm-up and timed batches
    do not fit in one epoch (`epoch_batches`), the window includes a new epoch's
    start (a fresh DALI pipeline or DataLoader workers, refilled queues): the row
    then says so (`crosses_epoch`), and its thread statistics are left out (the
    new epoch's threads did not exist when the window opened).
    """
    for _ in range(warmup):
        next(batches)
    sched0, cpu0, t0 = thread_schedstats(), tree_cpu_seconds(), time.perf_counter()
    for _ in range(s.batches):
        clips, _ = next(batches)
    if clips.is_cuda:
        import torch

        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    split = worker_time_split(sched0, thread_schedstats(), who, wall)
    n = s.batches * s.batch_size
    crosses = epoch_batches is not None and warmup + s.batches > epoch_batches
    return {"clips_per_s": n / wall, "cpu_ms_per_clip": 1000 * cpu / n, "crosses_epoch": crosses,
            **({} if crosses else split)}


def bench_config(name: str, shards: dict[str, Path], data: dict[str, ShardSet], decoder: dict,
                 s: Settings) -> dict:
    frames, stride = CONFIGS[name]
    spec = ClipSpec(frames=frames, stride=stride, crop_size=224)
    contenders = (("dali", dali_batches, "vp9"), ("frames", dali_batches, "jpeg"), ("reference", reference_batches, "vp9"))
    runs: dict[str, list[dict]] = {who: [] for who, _, _ in contenders}
    for _ in range(s.rounds):  # interleaved, so load from other processes hits all alike
        for who, make, codec in contenders:
            gen = make(shards[codec], spec, s)
            runs[who].append(measure(gen, who, s, warmup=warmup_batches(who, s.workers),
                                     epoch_batches=len(data[codec]) // s.batch_size))
            gen.close()
    med = {who: {k: statistics.median(r[k] for r in rs) for k in set.intersection(*map(set, rs)) - {"crosses_epoch"}}
           for who, rs in runs.items()}
    per_clip = mean_frames_decoded(data["vp9"], spec)
    limit = s.workers * decoder["frames_per_cpu_s"] / per_clip
    cpu_rate = {who: s.workers * 1000 / m["cpu_ms_per_clip"] for who, m in med.items()}
    return {
        "config": name, "runs": runs, **{f"{who}_{k}": v for who, m in med.items() for k, v in m.items()},
        **{f"{who}_clips_per_s_cpu": v for who, v in cpu_rate.items()},
        "crosses_epoch": sorted(who for who, rs in runs.items() if any(r["crosses_epoch"] for r in rs)),
        "frames_decoded_per_clip": per_clip,
        "decode_limit_clips_per_s": limit,
        "decode_limit_clips_per_s_wall": decoder["frames_per_s_wall"] / per_clip,
        "frames_vs_vp9_wall": med["frames"]["clips_per_s"] / med["dali"]["clips_per_s"],
        "frames_vs_vp9_cpu": cpu_rate["frames"] / cpu_rate["dali"],
        "bytes_read_per_clip_vp9": bytes_per_clip(data["vp9"], spec),
        "bytes_read_per_clip_frames": bytes_per_clip(data["jpeg"], spec),
        "shard_bytes_per_video_vp9": shard_bytes_per_video(shards["vp9"]),
        "shard_bytes_per_video_frames": shard_bytes_per_video(shards["jpeg"]),
        "dali_vs_reference_wall": med["dali"]["clips_per_s"] / med["reference"]["clips_per_s"],
        "dali_vs_reference_cpu": cpu_rate["dali"] / cpu_rate["reference"],
        "dali_vs_limit_wall": med["dali"]["clips_per_s"] * per_clip / decoder["frames_per_s_wall"],
        "dali_vs_limit_cpu": cpu_rate["dali"] / limit,
        "reference_vs_limit_cpu": cpu_rate["reference"] / limit,
    }


# ----------------------------------------------------------------------------- report


def print_table(rows: list[dict], decoder: dict, workers: int) -> None:
    print(f"decoder (ffmpeg, 1 thread): {decoder['frames_per_cpu_s']:.0f} frames per CPU-second; "
          f"{decoder['frames_per_s_wall']:.0f} frames/s wall with {workers} processes")
    head = (f"{'clip':>5} | {'DALI':>6} {'ref':>6} {'x':>5} | {'DALI':>6} {'ref':>6} {'x':>5} | "
            f"{'fr/clip':>7} {'limit':>6} {'DALI':>5} {'ref':>5}")
    print(f"{'':5} | {'wall clips/s':^20} | {'CPU ms per clip':^20} | {'decode limit (cpu basis)':^27}")
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['config']:>5} | {r['dali_clips_per_s']:6.1f} {r['reference_clips_per_s']:6.1f} "
              f"{r['dali_vs_reference_wall']:4.2f}x | {r['dali_cpu_ms_per_clip']:6.1f} "
              f"{r['reference_cpu_ms_per_clip']:6.1f} {r['dali_vs_reference_cpu']:4.2f}x | "
              f"{r['frames_decoded_per_clip']:7.1f} {r['decode_limit_clips_per_s']:6.1f} "
              f"{r['dali_vs_limit_cpu']:5.0%} {r['reference_vs_limit_cpu']:5.0%}")
    print(f"limit = {workers} cores x decoder frames per CPU-second / frames per clip; DALI/ref % of it use "
          f"{workers} cores / CPU time per clip")
    print(f"\n{'clip':>5} | {'VP9':>6} {'frames':>6} {'x':>5} (wall clips/s) | {'x cpu':>5} | "
          f"{'KB read/clip VP9':>16} {'frames':>7} | {'KB/video VP9':>12} {'frames':>7}")
    for r in rows:
        print(f"{r['config']:>5} | {r['dali_clips_per_s']:6.1f} {r['frames_clips_per_s']:6.1f} "
              f"{r['frames_vs_vp9_wall']:4.2f}x {'':15} | {r['frames_vs_vp9_cpu']:4.2f}x | "
              f"{r['bytes_read_per_clip_vp9'] / 1e3:16.1f} {r['bytes_read_per_clip_frames'] / 1e3:7.1f} | "
              f"{r['shard_bytes_per_video_vp9'] / 1e3:12.1f} {r['shard_bytes_per_video_frames'] / 1e3:7.1f}")
    for r in rows:
        print(f"{r['config']:>5} worker time: "
              + " | ".join(_time_split(r, who) for who in ("dali", "frames", "reference")))
        if r.get("crosses_epoch"):
            print(f"{r['config']:>5} note: the timed window of {', '.join(r['crosses_epoch'])} includes an epoch's "
                  "start (more warm-up + timed batches than one epoch of this data holds)")


def _time_split(row: dict, who: str) -> str:
    if f"{who}_worker_running" not in row:  # a window that spans epochs (see `measure`) has none
        return f"{who}: n/a"
    return (f"{who}: running {row[f'{who}_worker_running']:.0%}, waiting for a CPU "
            f"{row[f'{who}_worker_waiting_for_cpu']:.0%}, idle {row[f'{who}_worker_idle']:.0%}")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = [("dali_clips_per_s", "DALI VP9, wall"), ("frames_clips_per_s", "DALI JPEG frames, wall"),
            ("reference_clips_per_s", "reference VP9, wall"),
            ("dali_clips_per_s_cpu", "DALI, cores / CPU per clip"),
            ("reference_clips_per_s_cpu", "reference, cores / CPU per clip"),
            ("decode_limit_clips_per_s", "decode limit (ffmpeg)")]
    width = 0.8 / len(bars)
    for k, (key, label) in enumerate(bars):
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, [r[key] for r in rows], width, label=label)
    ax.set_xticks(x, [r["config"] for r in rows])
    ax.set_ylabel("training clips / s (224x224)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def run(s: Settings, name: str | None = None) -> dict:
    shards = {codec: bench_shards(s, codec) for codec in ("vp9", "jpeg")}
    data = {codec: ShardSet.open(path) for codec, path in shards.items()}
    decoder = decode_limit_fps(data["vp9"], s.workers, s.rounds)
    rows = [bench_config(name, shards, data, decoder, s) for name in s.configs]
    print_table(rows, decoder, s.workers)
    name = name or ("data_tiny" if s.tiny else "data")
    payload = {"settings": {**asdict(s), "data": str(s.data)}, "decoder": decoder,
               "videos": len(data["vp9"]), "results": rows}
    path = write_results(name, payload)
    plot(rows, results_path(name, ".png"), f"{s.device} loader, {s.workers} cores, batch {s.batch_size}, "
                                          f"{s.dataset['size'][0]}x{s.dataset['size'][1]} VP9 vs JPEG frames")
    print(f"wrote {path} and {results_path(name, '.png')}")
    return payload


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="a few small videos and batches (CI smoke run)")
    p.add_argument("--data", type=Path, default=None,
                   help="where the synthetic videos and shards are cached (default: a folder in the temp dir)")
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="clip shapes FxS")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8, TPN's per-GPU batch)")
    p.add_argument("--batches", type=int, default=None, help=f"timed batches per run (default {Settings.batches}, tiny 2)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved runs per loader (default 3, tiny 1)")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)),
                   help="DALI threads = DataLoader workers = ffmpeg processes (default: usable cores)")
    add_loader_device_arg(p, flags=("--loader-device", "--device"))  # --device: its older name
    p.add_argument("--name", default=None, help="results name under benchmarks/results/ (default: data, or data_tiny)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.loader import resolve_loader_device

    device = resolve_loader_device(args.loader_device)
    data = args.data or default_data_dir(args.tiny)
    s = Settings(data=data, tiny=args.tiny, configs=tuple(args.configs), batch_size=args.batch_size,
                 batches=args.batches or (2 if args.tiny else Settings.batches), rounds=args.rounds or (1 if args.tiny else 3),
                 workers=args.workers, device=device)
    try:
        run(s, args.name)
    except (FileNotFoundError, ValueError, subprocess.CalledProcessError) as err:
        print(f"benchmarks.data: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
