"""`python -m benchmarks.feed`: does the loader keep the training step fed? One run, per shard format.

Contenders, measured in interleaved rounds in one process (medians reported):

* in-memory: the training step replayed on batches already on the device
  (the rate training would have with an infinitely fast loader);
* loader alone: `ClipLoader` batches per second, per shard format
  (VP9 video shards and JPEG frame shards of the same videos);
* loader-fed: the same training step fed by the real `ClipLoader`, per format.

It prints clips/s of each and the ratios "loader-fed / in-memory" (1.00 =
never input-bound) and "loader / in-memory". On a CPU the model is the tiny
TPN (fp32, eager); on a GPU `tpn_r50_f8s8` in bf16 + channels_last_3d with
the whole step captured in a CUDA graph (`--compile` adds torch.compile).
The step mode that actually ran (eager / cuda-graph) is recorded per row.
The videos are the camera-like synthetic set of `benchmarks.data` (shared
cache). Writes benchmarks/results/<name>.json and .png.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import tpn
from benchmarks.common import bar_plot, endless, results_path, sync, write_results
from benchmarks.data import Settings, bench_shards, default_data_dir
from pipeline.cli import add_workers_arg
from tpn.engine import LossModule, StepOptions, TrainStep, build_optimizer

FORMATS = ("vp9", "jpeg")


def step_for(name: str, device: torch.device, compile_: bool) -> tuple[TrainStep, StepOptions]:
    """The training step of tpn.train for `name`: fp32 eager on a CPU, bf16 + cl3d + graph on a GPU."""
    cfg = tpn.get_config(name)
    torch.manual_seed(0)
    model = tpn.create_model(name).to(device)
    gpu = device.type == "cuda"
    opts = StepOptions(
        clip_grad=40.0,
        amp_dtype=torch.bfloat16 if gpu else None,
        channels_last=gpu,
        cuda_graph=gpu,
        compile=compile_ and gpu,
    )
    if opts.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    opt = build_optimizer(
        list(model.parameters()), lr=0.001, momentum=0.9, nesterov=True, weight_decay=1e-4, device=device
    )
    return TrainStep(LossModule(model, cfg.recipe.aux_weight), opt, opts, device), opts


def timed(fn, batches: int, batch_size: int, device: torch.device) -> float:
    """clips/s of `batches` calls of fn() (each one batch), synchronised at both ends."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(batches):
        fn()
    sync(device)
    return batches * batch_size / (time.perf_counter() - t0)


def run(args: argparse.Namespace) -> dict:
    from pipeline import ClipLoader

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = args.model or ("tpn_r50_f8s8" if device.type == "cuda" else "tpn_tiny_f8s4")
    spec = tpn.get_config(name).clip
    s = Settings(data=args.data, tiny=args.tiny, workers=args.workers, content="synthetic")
    shards = {fmt: bench_shards(s, fmt) for fmt in FORMATS}
    loaders = {
        fmt: ClipLoader(shards[fmt], spec, batch_size=args.batch, num_threads=args.workers, seed=1) for fmt in FORMATS
    }
    streams = {fmt: endless(ld) for fmt, ld in loaders.items()}
    step, opts = step_for(name, device, args.compile)
    fixed = [next(streams["jpeg"]) for _ in range(2)]
    fixed = [(x.to(device), y.to(device)) for x, y in fixed]
    for i in range(args.warmup):  # compile, capture, cuDNN search: before any timing
        step(*fixed[i % 2])
    for fmt in FORMATS:  # fill every loader's queues before timing
        for _ in range(args.warmup):
            next(streams[fmt])
    counter = iter(range(10**9))

    def in_memory():
        step(*fixed[next(counter) % 2])

    def fed(fmt):
        x, y = next(streams[fmt])
        step(x, y)

    contenders = {"in-memory": in_memory}
    for fmt in FORMATS:
        contenders[f"loader-{fmt}"] = lambda fmt=fmt: next(streams[fmt])
        contenders[f"fed-{fmt}"] = lambda fmt=fmt: fed(fmt)
    runs: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(args.rounds):
        for who, fn in contenders.items():
            runs[who].append(timed(fn, args.batches, args.batch, device))
    med = {who: statistics.median(v) for who, v in runs.items()}
    rows = [
        {"contender": who, "clips_per_s": med[who], "vs_in_memory": med[who] / med["in-memory"], "runs": runs[who]}
        for who in contenders
    ]
    for ld in loaders.values():
        ld.close()
    return {
        "model": name,
        "device": str(device),
        "batch": args.batch,
        "threads": args.workers,
        "step_mode": step.mode,
        "compiled": opts.compile,
        "amp": str(opts.amp_dtype),
        "decoders": {fmt: ld.decoder for fmt, ld in loaders.items()},
        "rows": rows,
    }


def print_table(payload: dict) -> None:
    print(
        f"{payload['model']} on {payload['device']}, batch {payload['batch']}, {payload['threads']} loader threads, "
        f"step mode {payload['step_mode']}{' (compiled)' if payload['compiled'] else ''}"
    )
    print(f"{'contender':>14} {'clips/s':>9} {'x in-memory':>12}")
    for r in payload["rows"]:
        print(f"{r['contender']:>14} {r['clips_per_s']:9.1f} {r['vs_in_memory']:11.2f}x")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.feed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default=None, help="zoo name (default: tpn_r50_f8s8 on a GPU, tpn_tiny_f8s4 on a CPU)")
    p.add_argument("--batch", type=int, default=None, help="clips per step (default: 16 on a GPU, 8 on a CPU)")
    p.add_argument("--batches", type=int, default=None, help="timed batches per contender and round (default 12)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 3)")
    p.add_argument("--warmup", type=int, default=6, help="untimed steps and batches before timing")
    add_workers_arg(p, len(os.sched_getaffinity(0)), flags=("--workers", "--threads"))  # --threads: its older name
    p.add_argument("--compile", action="store_true", help="torch.compile the step (GPU)")
    p.add_argument("--tiny", action="store_true", help="CI smoke run: few small videos and batches")
    p.add_argument("--data", type=Path, default=None, help="video and shard cache (default: benchmarks.data's)")
    p.add_argument("--name", default=None, help="results name under benchmarks/results/ (default: feed[_tiny])")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gpu = torch.cuda.is_available()
    args.batch = args.batch or (16 if gpu else (2 if args.tiny else 8))
    args.batches = args.batches or (2 if args.tiny else 12)
    args.rounds = args.rounds or (1 if args.tiny else 3)
    if args.tiny:
        args.warmup = min(args.warmup, 2)
    args.data = args.data or default_data_dir(args.tiny)
    payload = run(args)
    print_table(payload)
    name = args.name or ("feed_tiny" if args.tiny else "feed")
    path = write_results(
        name, {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, **payload}
    )
    labels = [r["contender"] for r in payload["rows"]]
    bar_plot(
        results_path(name, ".png"),
        labels,
        [r["clips_per_s"] for r in payload["rows"]],
        ylabel="clips / s",
        title=f"{payload['model']} training fed by ClipLoader, {payload['device']}, step {payload['step_mode']}",
    )
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
