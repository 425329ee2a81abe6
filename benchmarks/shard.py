"""`python -m benchmarks.shard`: pipeline.shard against plain ffmpeg on the same files and cores.

"Plain ffmpeg" runs exactly the argv `pipeline.shard` runs (same
`transcode_argv`, same settings), `--workers` at a time, writing loose files:
the cost of the transcode alone. `pipeline.shard` adds probing, hashing, tar
and index writing, resume bookkeeping and ordered assembly on top. Rounds
alternate the two (and which goes first) so that a busy machine hurts both alike; medians are
reported, and CPU seconds (this process plus its ffmpeg children) beside wall
time, because CPU time is far less sensitive to other load.

Goal: shard wall time <= 1.10x plain ffmpeg.
Results: benchmarks/results/shard-<date>-<device>.json and .png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import bar_plot, results_path, write_results
from pipeline.ffmpeg import EncodeSettings, SourceSpec, parse_size, transcode_argv
from pipeline.layouts import scan
from pipeline.shard import shard_dataset
from pipeline.synth import make_dataset

GOAL = 1.10


def cpu_seconds() -> float:
    """User + system CPU of this process and of its reaped children (the ffmpeg runs)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(fn) -> tuple[float, float]:
    """(wall s, CPU s) of one call."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu_seconds() - c0


def plain_ffmpeg(src: Path, dst: Path, settings: EncodeSettings, workers: int) -> None:
    """The same transcodes as pipeline.shard, nothing else: loose output files, no checks."""
    items = scan(src).items
    dst.mkdir(parents=True, exist_ok=True)

    def one(item) -> None:
        argv = transcode_argv(SourceSpec(item.path), dst / f"{item.key}.{settings.ext}", settings)
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, items))


def run(args: argparse.Namespace) -> dict:
    data = args.data or Path(tempfile.gettempdir()) / "tpn-bench-shard-src"
    make_dataset(data, classes=args.classes, train_per_class=args.videos_per_class, val_per_class=0,
                 frames=args.frames, size=args.size, seed=0)
    videos = args.classes * args.videos_per_class
    settings = EncodeSettings(codec=args.codec, short_side=args.short_side)
    scratch = Path(tempfile.mkdtemp(prefix="tpn-bench-shard-"))
    rounds = []
    try:
        for r in range(args.rounds):
            runs = {
                "plain": lambda: plain_ffmpeg(data, scratch / f"plain{r}", settings, args.workers),
                "shard": lambda: shard_dataset(data, scratch / f"shard{r}", codec=args.codec,
                                               short_side=args.short_side, workers=args.workers),
            }
            order = ["plain", "shard"] if r % 2 == 0 else ["shard", "plain"]  # neither always goes first
            got = {name: measure(runs[name]) for name in order}
            plain, shard = got["plain"], got["shard"]
            rounds.append({"plain_wall_s": plain[0], "plain_cpu_s": plain[1],
                           "shard_wall_s": shard[0], "shard_cpu_s": shard[1]})
            print(f"round {r + 1}/{args.rounds}: plain {plain[0]:.2f} s, shard {shard[0]:.2f} s "
                  f"(ratio {shard[0] / plain[0]:.3f})", flush=True)
            shutil.rmtree(scratch / f"plain{r}")
            shutil.rmtree(scratch / f"shard{r}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    return {
        "config": {"videos": videos, "frames": args.frames, "size": list(args.size), "workers": args.workers,
                   "rounds": args.rounds, "settings": settings.to_json()},
        "rounds": rounds,
        "median": med,
        "plain_videos_per_s": videos / med["plain_wall_s"],
        "shard_videos_per_s": videos / med["shard_wall_s"],
        "ratio_wall": med["shard_wall_s"] / med["plain_wall_s"],
        "ratio_cpu": med["shard_cpu_s"] / med["plain_cpu_s"],
        "goal_ratio_wall": GOAL,
    }


def table(res: dict) -> str:
    m = res["median"]
    rows = [
        ("", "plain ffmpeg", "pipeline.shard", "shard/plain"),
        ("videos/s", f"{res['plain_videos_per_s']:.2f}", f"{res['shard_videos_per_s']:.2f}",
         f"{res['shard_videos_per_s'] / res['plain_videos_per_s']:.3f}"),
        ("wall s (median)", f"{m['plain_wall_s']:.2f}", f"{m['shard_wall_s']:.2f}", f"{res['ratio_wall']:.3f}"),
        ("CPU s (median)", f"{m['plain_cpu_s']:.2f}", f"{m['shard_cpu_s']:.2f}", f"{res['ratio_cpu']:.3f}"),
    ]
    lines = [f"{a:<16} {b:>13} {c:>15} {d:>12}" for a, b, c, d in rows]
    verdict = "meets" if res["ratio_wall"] <= GOAL else "misses"
    lines.append(f"goal: shard wall <= {GOAL:.2f}x plain ffmpeg -> {res['ratio_wall']:.3f}x, {verdict} it")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    """Videos/s of both, median with min-max whiskers over the rounds."""
    videos = res["config"]["videos"]
    walls = [[r["plain_wall_s"] for r in res["rounds"]], [r["shard_wall_s"] for r in res["rounds"]]]
    rates = [videos / statistics.median(w) for w in walls]
    errors = [(rate - videos / max(w), videos / min(w) - rate) for rate, w in zip(rates, walls)]
    c = res["config"]
    title = f"{c['videos']} videos x {c['frames']} frames, {c['workers']} workers: wall ratio {res['ratio_wall']:.3f}"
    return bar_plot(path, ["plain ffmpeg", "pipeline.shard"], rates, errors=errors,
                    ylabel="videos/s (median, min-max)", title=title)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.shard",
        description="Videos/s of pipeline.shard vs plain ffmpeg running the same argv on the same synthetic "
        f"files and cores (goal: shard wall time <= {GOAL:.2f}x). Writes JSON + PNG to benchmarks/results/.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--classes", type=int, default=8, help="synthetic classes")
    p.add_argument("--videos-per-class", type=int, default=6, help="synthetic videos per class")
    p.add_argument("--frames", type=int, default=64, help="frames per video")
    p.add_argument("--size", type=parse_size, default=(320, 240), help="source size WxH")
    p.add_argument("--short-side", type=int, default=256, help="output short side")
    p.add_argument("--codec", choices=("vp9", "h264"), default="vp9", help="output codec")
    p.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)), help="parallel ffmpeg runs")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians reported)")
    p.add_argument("--data", type=Path, default=None, help="where to keep the synthetic source videos")
    p.add_argument("--name", default=None, help="results name under benchmarks/results/ (default: shard-<date>-cpu<cores>)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    print(table(res))
    device = f"cpu{len(os.sched_getaffinity(0))}"
    name = args.name or f"shard-{dt.date.today().isoformat()}-{device}"
    path = write_results(name, res)
    plot(res, results_path(name, ".png"))
    print(f"results: {path} and {results_path(name, '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
