"""`python -m benchmarks.scale`: the shard reader at the sizes users train at.

index: a compact index of N synthetic samples (300k and 3M by default) is
  written as the loader caches it, then a fresh process opens it and touches
  every per-sample number the loader reads in an epoch; reported: open time,
  resident bytes per sample (RSS growth / N), and file bytes per sample. For
  reference the same process also builds the previous representation (one
  Python record per sample) for the smallest N.
storage: the same frame shards read from a local folder and from an S3
  server on loopback (moto, in its own process): ClipLoader clips/s from
  each, against what the server delivers to a plain concurrent range-read
  loop fetching exactly the loader's byte ranges (the ceiling a loader can
  reach through that server).
Writes benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_results
from pipeline.cli import add_workers_arg

SIZES = (300_000, 3_000_000)


# ----------------------------------------------------------------------------- index


def synthetic_index(n: int, shards: int = 300):
    """A SampleIndex of n video samples spread over `shards` shards (what build_index makes, at scale)."""
    from pipeline.format.sample_index import INDEX_VERSION, SampleIndex

    rng = np.random.default_rng(0)
    keys = [f"video{i:09d}-{rng.integers(1 << 40):010x}" for i in range(n)]
    key_bytes = np.frombuffer("".join(keys).encode(), dtype=np.uint8)
    key_start = np.zeros(n + 1, np.int64)
    key_start[1:] = np.cumsum([len(k) for k in keys])
    size = rng.integers(200_000, 2_000_000, n).astype(np.int32)
    arrays = {
        "shard": (np.arange(n) * shards // n).astype(np.uint32),
        "label": rng.integers(0, 400, n).astype(np.int32),
        "frames": rng.integers(200, 300, n).astype(np.int32),
        "width": np.full(n, 340, np.uint16),
        "height": np.full(n, 256, np.uint16),
        "fps": np.full(n, 30, np.float32),
        "video_off": np.cumsum(size, dtype=np.int64),
        "video_size": size,
        "json_off": np.zeros(n, np.int64),
        "json_size": np.full(n, 300, np.int32),
        "key_start": key_start,
        "key_bytes": key_bytes,
        "frame_start": np.zeros(n + 1, np.int64),
        "frame_off": np.zeros(0, np.int64),
        "frame_size": np.zeros(0, np.int32),
    }
    return SampleIndex(arrays, {"kind": "video", "codec": "vp9", "ext": "webm", "version": INDEX_VERSION})


OPEN_SCRIPT = """
import json, sys, time
def rss():
    fields = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
    return int(fields['VmRSS'].split()[0]) * 1024
from pathlib import Path
from pipeline.format.sample_index import SampleIndex
before = rss()
t0 = time.perf_counter()
ix = SampleIndex.load(Path(sys.argv[1]))
opened = time.perf_counter() - t0
# every number the loader reads per sample in an epoch
total = int(ix.frames.sum()) + int(ix.label.sum()) + int(ix.height.sum()) + int(ix.width.sum())
total += int(ix.video_off.sum() % 7) + int(ix.video_size.sum()) + int(ix.shard.sum())
touched = time.perf_counter() - t0
print(json.dumps({"open_s": opened, "open_and_touch_s": touched, "rss_bytes": rss() - before, "n": len(ix)}))
"""


def bench_index(n: int, tmp: Path) -> dict:
    folder = tmp / f"index-{n}"
    t0 = time.perf_counter()
    synthetic_index(n).save(folder)
    write_s = time.perf_counter() - t0
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-c", OPEN_SCRIPT, str(folder)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(root)},
        check=True,
    )
    got = json.loads(run.stdout)
    file_bytes = sum(p.stat().st_size for p in folder.iterdir())
    return {
        "samples": n,
        "write_s": write_s,
        **got,
        "rss_bytes_per_sample": got["rss_bytes"] / n,
        "file_bytes_per_sample": file_bytes / n,
    }


def python_records_bytes_per_sample(n: int) -> float:
    """RSS per sample of the previous index: one record of (offset, size, name) tuples per member."""
    script = f"""
def rss():
    fields = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)
    return int(fields['VmRSS'].split()[0]) * 1024
before = rss()
records = [{{ext: (i * 4096 + k, 1000 + k, f"video{{i:09d}}-0123456789.{{ext}}") for k, ext in
            enumerate(("webm", "lbl", "frames", "json"))}} for i in range({n})]
print((rss() - before) / {n})
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=True)
    return float(run.stdout)


# ----------------------------------------------------------------------------- object storage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_s3() -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the local S3 server (moto) did not start")


def loader_rate(location, spec, batches: int, batch_size: int, threads: int) -> float:
    from pipeline import ClipLoader

    loader = ClipLoader(location, spec, batch_size=batch_size, device="cpu", num_threads=threads, seed=3)
    it = iter(loader)
    for _ in range(3):
        next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch_size / (time.perf_counter() - t0)
    loader.close()
    return rate


def range_loop_rate(url: str, spec, batches: int, batch_size: int) -> float:
    """Clips/s of fetching exactly the loader's byte ranges, one concurrent request batch per batch."""
    from pipeline import ClipLoader
    from pipeline.clips import sampling

    loader = ClipLoader(url, spec, batch_size=batch_size, device="cpu", seed=3)
    data = loader.data
    plan = loader.batch_indices(0)[3 : 3 + batches]
    t0 = time.perf_counter()
    for batch in plan:
        wanted = []
        for i in batch:
            frames = loader.plan(int(i), 0).frames
            wanted.append((int(i), sampling.decode_plan(frames)[0]))
        data.frame_bytes_many(wanted)
    rate = len(plan) * batch_size / (time.perf_counter() - t0)
    loader.close()
    return rate


def bench_storage(tmp: Path, rounds: int, batches: int, batch_size: int, threads: int) -> dict:
    import fsspec

    from benchmarks.data import Settings, bench_shards, default_data_dir
    from pipeline import ClipSpec

    shards = bench_shards(Settings(data=default_data_dir(), workers=threads, content="synthetic"), "jpeg")
    spec = ClipSpec(frames=8, stride=8, crop_size=224)
    proc, endpoint = start_s3()
    env = {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "XDG_CACHE_HOME": str(tmp / "cache"),
    }
    os.environ.update(env)
    try:
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("bench")
        for path in sorted(shards.iterdir()):
            if path.is_file():
                fs.put_file(str(path), f"bench/frames/{path.name}")
        url = "s3://bench/frames"
        runs: dict[str, list[float]] = {"local disk": [], "s3 loopback": [], "s3 range loop": []}
        for _ in range(rounds):
            runs["local disk"].append(loader_rate(shards, spec, batches, batch_size, threads))
            runs["s3 loopback"].append(loader_rate(url, spec, batches, batch_size, threads))
            runs["s3 range loop"].append(range_loop_rate(url, spec, batches, batch_size))
    finally:
        proc.kill()
        proc.wait()
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "runs": runs,
        "clips_per_s": med,
        "loader_vs_range_loop": med["s3 loopback"] / med["s3 range loop"],
        "s3_vs_local": med["s3 loopback"] / med["local disk"],
        "batch_size": batch_size,
        "threads": threads,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="index sizes (samples)")
    p.add_argument("--only", choices=["index", "storage"], default=None, help="run one part")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the storage part")
    p.add_argument("--batches", type=int, default=10, help="timed batches per storage contender")
    p.add_argument("--batch-size", type=int, default=8, help="clips per batch")
    add_workers_arg(p, len(os.sched_getaffinity(0)), flags=("--workers", "--threads"))  # --threads: its older name
    p.add_argument("--name", default="scale", help="results name under benchmarks/results/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    payload: dict = {"settings": vars(args)}
    with tempfile.TemporaryDirectory() as tmp:
        if args.only in (None, "index"):
            rows = [bench_index(n, Path(tmp)) for n in args.sizes]
            payload["index"] = rows
            payload["python_records_bytes_per_sample"] = python_records_bytes_per_sample(min(args.sizes))
            print(f"{'samples':>9} {'open s':>7} {'open+touch s':>13} {'RSS B/sample':>13} {'file B/sample':>14}")
            for r in rows:
                print(
                    f"{r['samples']:9d} {r['open_s']:7.3f} {r['open_and_touch_s']:13.3f} "
                    f"{r['rss_bytes_per_sample']:13.1f} {r['file_bytes_per_sample']:14.1f}"
                )
            print(
                f"previous index (Python records), {min(args.sizes)} samples: "
                f"{payload['python_records_bytes_per_sample']:.0f} B/sample"
            )
        if args.only in (None, "storage"):
            st = bench_storage(Path(tmp), args.rounds, args.batches, args.batch_size, args.workers)
            payload["storage"] = st
            print(
                "frame shards, 8x8 clips at 224, clips/s: "
                + ", ".join(f"{k} {v:.1f}" for k, v in st["clips_per_s"].items())
            )
            print(
                f"loader from S3 / plain range-read loop: {st['loader_vs_range_loop']:.2f}x (goal >= 0.8); "
                f"S3 / local disk: {st['s3_vs_local']:.2f}x"
            )
    path = write_results(args.name, payload)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
