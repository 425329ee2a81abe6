"""`python -m benchmarks.loader_variants`: which ClipLoader configuration feeds training fastest here.

    python -m benchmarks.loader_variants            # every variant this machine can run, 8x8 clips at 224
    python -m benchmarks.loader_variants --tiny     # CI smoke run: small videos, two batches per variant

On the same synthetic videos (the shards `benchmarks.data` caches, plus an
H.264 copy of them on a GPU) it times training batches of 8x8 clips for:
decoder (the host path, NVDEC, DALI's CPU decoder, or PyAV in host threads;
on a GPU, DALI augments there, the host path copies its clips there),
codec (VP9, H.264, JPEG frames), batch size, threads, and several loaders
running side by side (each takes its own share of the samples, as DDP ranks
would; their clips/s add up). On a CPU-only machine only the CPU variants run.

Each variant: untimed batches past the prefetch queue, then `--batches` timed ones; clips/s and
the ratio to the first variant (the loader's default) are printed and
written to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.common import endless, sync, write_results
from benchmarks.data import Settings, bench_shards, default_data_dir, warmup_batches
from pipeline import ClipSpec


@dataclass(frozen=True)
class Variant:
    decoder: str  # "host" (host threads, no DALI), "nvdec", "cpu" (DALI's CPU decoder), "pyav", "nvjpeg" (frames)
    codec: str = "vp9"  # "vp9", "h264" or "jpeg" (frame shards)
    batch_size: int = 8
    threads: int = 0  # 0 = all usable cores
    loaders: int = 1  # loaders running side by side
    hw_load: float | None = None  # nvjpeg: share sent to the hardware JPEG decoder (None: the loader's default)

    @property
    def label(self) -> str:
        t = f", {self.threads} threads" if self.threads else ""
        side = f", {self.loaders} loaders side by side" if self.loaders > 1 else ""
        hw = f", hw load {self.hw_load:g}" if self.hw_load is not None else ""
        return f"{self.decoder} {self.codec}, batch {self.batch_size}{t}{side}{hw}"


def variants(gpu: bool, tiny: bool = False) -> list[Variant]:
    """The loader's default first (on a CPU the host path, on a GPU DALI); then the other decoders."""
    if tiny:
        return [
            Variant("host", batch_size=2),
            Variant("host", batch_size=4),
            Variant("cpu", batch_size=2),
            Variant("pyav", batch_size=2),
        ]
    if not gpu:
        return [
            Variant("host"),
            Variant("host", batch_size=32),
            Variant("host", loaders=2),
            Variant("cpu"),
            Variant("cpu", batch_size=32),
            Variant("pyav"),
            Variant("host", codec="jpeg"),
            Variant("host", codec="jpeg", batch_size=32),
            Variant("cpu", codec="jpeg"),
        ]
    frames = [Variant("nvjpeg", codec="jpeg"), Variant("nvjpeg", codec="jpeg", batch_size=32)]
    frames += [Variant("nvjpeg", codec="jpeg", batch_size=32, hw_load=h) for h in (0.0, 0.9, 1.0)]
    frames += [
        Variant("nvjpeg", codec="jpeg", loaders=4, threads=4),
        Variant("cpu", codec="jpeg", batch_size=32),
        Variant("host", codec="jpeg", batch_size=32),
    ]  # the host path, copied to the GPU
    return [  # VP9 on a GPU: the loader's default decodes on the CPU threads and augments on the GPU
        Variant("cpu"),
        Variant("cpu", batch_size=32),
        Variant("cpu", loaders=4, threads=4),
        Variant("nvdec"),
        Variant("nvdec", batch_size=32),
        Variant("nvdec", threads=4),
        Variant("nvdec", loaders=4),
        Variant("nvdec", codec="h264"),
        Variant("nvdec", codec="h264", batch_size=32),
        Variant("nvdec", codec="h264", loaders=4),
        Variant("pyav"),
        Variant("pyav", batch_size=32),
        Variant("host", batch_size=32),
    ] + frames


def h264_shards(s: Settings) -> Path:
    from pipeline.shard import shard_dataset

    out = s.data / "shards-h264"
    if not (out / "manifest.json").is_file():
        shard_dataset(s.data / "src", out, codec="h264", short_side=None, shard_samples=8, workers=s.workers)
    return out


def time_variant(v: Variant, shards: Path, spec: ClipSpec, device: str, batches: int) -> dict:
    """Clips/s of `v.loaders` loaders iterating at once, `batches` timed batches each after a warm-up."""
    from pipeline import ClipLoader

    threads = v.threads or len(os.sched_getaffinity(0))
    loaders = [
        ClipLoader(
            shards,
            spec,
            batch_size=v.batch_size,
            device=device,
            decoder=v.decoder,
            num_threads=threads,
            rank=r,
            world_size=v.loaders,
            **({} if v.hw_load is None else {"hw_decoder_load": v.hw_load}),
        )
        for r in range(v.loaders)
    ]
    barrier = threading.Barrier(v.loaders + 1)
    done: list[float] = []
    errors: list[BaseException] = []

    def run(loader) -> None:
        try:
            it = endless(loader)
            # past what the loader holds ready: timing in the steady state
            for _ in range(warmup_batches("frames" if v.decoder == "host" else "frames-dali", threads)):
                next(it)
            sync(device)
            barrier.wait()
            for _ in range(batches):
                clips, _ = next(it)
            sync(device)
            done.append(time.perf_counter())
        except BaseException as e:  # reported by the caller
            errors.append(e)
            barrier.abort()

    workers = [threading.Thread(target=run, args=(ld,)) for ld in loaders]
    for w in workers:
        w.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    wall = max(done) - t0
    return {**asdict(v), "label": v.label, "clips_per_s": v.loaders * batches * v.batch_size / wall, "seconds": wall}


def run(args: argparse.Namespace) -> dict:
    from pipeline.clips.loader import resolve_loader_device

    device = resolve_loader_device("auto")
    s = Settings(data=args.data, tiny=args.tiny, content="synthetic")
    todo = variants(device == "gpu", args.tiny)
    shards = {"vp9": bench_shards(s)}
    if any(v.codec == "jpeg" for v in todo):
        shards["jpeg"] = bench_shards(s, "jpeg")
    if any(v.codec == "h264" for v in todo):
        shards["h264"] = h264_shards(s)
    spec = ClipSpec(frames=8, stride=8, crop_size=112 if args.tiny else 224)
    rows = []
    for v in todo:
        try:
            row = time_variant(v, shards[v.codec], spec, device, args.batches)
        except Exception as e:  # one failing variant must not hide the others
            row = {**asdict(v), "label": v.label, "clips_per_s": None, "error": f"{type(e).__name__}: {e}"[:500]}
        rows.append(row)
        print(
            f"{v.label:<52} " + (f"{row['clips_per_s']:8.1f} clips/s" if row["clips_per_s"] else row["error"]),
            flush=True,
        )
    base = rows[0]["clips_per_s"]
    for r in rows:
        r["vs_default"] = r["clips_per_s"] / base if base and r["clips_per_s"] else None
    return {"device": device, "clip": "8x8 at 224", "batches": args.batches, "rows": rows}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.loader_variants",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tiny", action="store_true", help="CI smoke run: small videos, two timed batches")
    p.add_argument("--data", type=Path, default=None, help="cache of videos and shards (default: benchmarks.data's)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per loader (default 12, tiny 2)")
    p.add_argument("--name", default="loader_variants", help="results name under benchmarks/results/")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.data = args.data or default_data_dir(args.tiny)
    args.batches = args.batches or (2 if args.tiny else 12)
    payload = run(args)
    print(f"\n{'variant':<52} {'clips/s':>8} {'x default':>10}")
    for r in payload["rows"]:
        cps = f"{r['clips_per_s']:8.1f}" if r["clips_per_s"] else "  failed"
        ratio = f"{r['vs_default']:9.2f}x" if r["vs_default"] else "         -"
        print(f"{r['label']:<52} {cps} {ratio}")
    print(f"results: {write_results(args.name, payload)}")
    return 0 if all(r["clips_per_s"] for r in payload["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
