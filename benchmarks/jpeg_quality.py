"""`python -m benchmarks.jpeg_quality`: how the JPEG quantiser of frame shards trades bytes, fidelity and decode speed.

For each ffmpeg mjpeg `-q:v` value it shards the same camera-like synthetic
videos (`pipeline.synth --grain`) as frame shards and reports, in one run:
bytes per frame, PSNR of the stored frames against the source video's frames
decoded at the same size, and DALI's CPU image-decoder rate (frames/s, one
thread). The default of `pipeline.shard --codec jpeg --quality` is the
largest -q:v (smallest files) whose PSNR stays within 1 dB of -q:v 2.
Results go to benchmarks/results/<name>.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import write_results

QUALITIES = (2, 3, 4, 5, 7, 10)


def source_frames(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def decode_rate(images: list[bytes], rounds: int = 3) -> float:
    """Frames/s of DALI's CPU image decoder on one thread (median of `rounds` passes)."""
    from nvidia.dali import fn, pipeline_def, types

    batch = 32
    data = [np.frombuffer(b, np.uint8) for b in images[: (len(images) // batch) * batch]]

    def source(info):
        if (info.iteration + 1) * batch > len(data):
            raise StopIteration
        return data[info.iteration * batch : (info.iteration + 1) * batch]

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, prefetch_queue_depth=1)
    def pipe():
        jpegs = fn.external_source(source=source, batch=True, batch_info=True)
        return fn.decoders.image(jpegs, device="cpu", output_type=types.RGB)

    rates = []
    for _ in range(rounds):
        p = pipe()
        p.build()
        t0, n = time.perf_counter(), 0
        try:
            while True:
                p.run()
                n += batch
        except StopIteration:
            pass
        rates.append(n / (time.perf_counter() - t0))
    return float(np.median(rates))


def measure(src: Path, out: Path, q: int) -> dict:
    from PIL import Image

    from pipeline.shard import shard_dataset
    from pipeline.format.shardset import ShardSet

    shards = out / f"q{q}"
    shard_dataset(src, shards, codec="jpeg", quality=q, short_side=None, workers=2)
    data = ShardSet.open(shards)
    sizes, scores, images = [], [], []
    for i in range(len(data)):
        frames = data.frame_bytes(i, range(data.frame_count(i)))
        reference = source_frames(src / data.meta(i)["source"])
        for image, ref in zip(frames, reference):
            decoded = np.asarray(Image.open(io.BytesIO(image)).convert("RGB"))
            scores.append(psnr(decoded, ref))
        sizes += [len(b) for b in frames]
        images += frames
    return {
        "q": q,
        "bytes_per_frame": float(np.mean(sizes)),
        "psnr_db": float(np.mean(scores)),
        "dali_cpu_decode_fps_1thread": decode_rate(images),
    }


def choose(rows: list[dict], tolerance_db: float = 1.0) -> int:
    """The largest q whose PSNR is within `tolerance_db` of the finest setting's (pure)."""
    best = max(r["psnr_db"] for r in rows)
    return max(r["q"] for r in rows if r["psnr_db"] >= best - tolerance_db)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.jpeg_quality",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--videos", type=int, default=8, help="synthetic videos (one per class)")
    p.add_argument("--frames", type=int, default=48, help="frames per video")
    p.add_argument("--size", default="320x240", help="frame size WxH")
    p.add_argument("--grain", type=float, default=6.0, help="camera-like texture and noise (see pipeline.synth)")
    p.add_argument("--qualities", type=int, nargs="+", default=list(QUALITIES), help="mjpeg -q:v values")
    p.add_argument("--name", default="jpeg_quality", help="results name under benchmarks/results/")
    return p


def main(argv: list[str] | None = None) -> int:
    from pipeline.shard.ffmpeg import parse_size
    from pipeline.synth import make_dataset

    args = build_parser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        src = make_dataset(
            Path(tmp) / "src",
            classes=min(8, args.videos),
            train_per_class=max(1, args.videos // 8),
            val_per_class=0,
            frames=args.frames,
            size=parse_size(args.size),
            grain=args.grain,
        )
        rows = [measure(src, Path(tmp), q) for q in args.qualities]
    chosen = choose(rows)
    print(f"{'q:v':>4} {'bytes/frame':>12} {'PSNR dB':>8} {'DALI CPU decode fps (1 thread)':>31}")
    for r in rows:
        print(f"{r['q']:>4} {r['bytes_per_frame']:12.0f} {r['psnr_db']:8.2f} {r['dali_cpu_decode_fps_1thread']:31.0f}")
    print(f"largest -q:v within 1 dB of the finest: {chosen}")
    path = write_results(args.name, {"settings": vars(args), "rows": rows, "chosen_q": chosen})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
