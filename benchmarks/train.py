"""Training-step speed: clips/s and MFU of fp32 eager vs bf16 + channels_last_3d vs + CUDA graph.

    python -m benchmarks.train              # tpn_r50_f8s8; GPU: batch 16, 3 modes; CPU: batch 2, eager only
    python -m benchmarks.train --batch 32   # another batch (the same for every mode)
    python -m benchmarks.train --tiny       # CI smoke run: the tiny TPN, batch 2, a few steps

Modes (same model, batch and synthetic clips, one run):
  fp32-eager      fp32, NCTHW, eager: the peer toolkits' recipe (mmaction2, the original TPN code),
                  with PyTorch's defaults (cuDNN convolutions may use TF32 on a GPU); the baseline
  fp32-notf32-eager  the same with TF32 off everywhere (strict fp32, GPU only; for reference)
  bf16-cl3d       bf16 autocast + channels_last_3d, eager
  bf16-cl3d-graph the same step captured in one CUDA graph (tpn.engine.TrainStep), GPU only
  bf16-cl3d-compile-graph  the same with torch.compile'd forward + loss (compiled in the warm-up), GPU only
On a CPU only the eager paths run: fp32, and bf16 where the CPU has native bf16.

Each mode runs the full training step of tpn.train (forward, main + aux
loss, backward, clipping at 40, fused SGD). Modes alternate round by round
so a busy machine slows them alike; the median round is reported.
FLOPs are counted from the model (torch.utils.flop_counter, forward +
backward of one step, on the meta device), and MFU is achieved FLOP/s over
the measured bf16 (GPU) or fp32 (CPU) matmul rate of the same device.
Goals on an H100, judged on the fastest captured mode: >= 3x fp32-eager, MFU >= 35%.
Writes benchmarks/results/<name>.json and <name>.png.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch

import tpn
from benchmarks.common import bar_plot, results_path, write_results
from tpn.engine import MIN_CUDNN, LossModule, StepOptions, TrainStep, build_optimizer

BASELINE = "fp32-eager"
GOAL_SPEEDUP, GOAL_MFU = 3.0, 0.35  # the goals on an H100


# ----------------------------------------------------------------- pure helpers


def modes_for(device: str, native_bf16_cpu: bool) -> list[str]:
    if device == "cuda":
        return ["fp32-eager", "fp32-notf32-eager", "bf16-cl3d", "bf16-cl3d-graph", "bf16-cl3d-compile-graph"]
    return ["fp32-eager", "bf16-eager"] if native_bf16_cpu else ["fp32-eager"]


def step_options(mode: str, device: str, is_3d: bool) -> StepOptions:
    bf16 = mode.startswith("bf16")
    return StepOptions(
        clip_grad=40.0,
        amp_dtype=torch.bfloat16 if bf16 else None,
        channels_last="cl3d" in mode and is_3d and device == "cuda",
        cuda_graph=mode.endswith("graph"),
        compile="compile" in mode,
    )


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's measured matmul FLOP/s."""
    return flops_per_step / seconds_per_step / peak_flops


def add_speedups(rows: list[dict]) -> list[dict]:
    base = next((r["clips_per_s"] for r in rows if r["mode"] == BASELINE), None)
    for r in rows:
        r["speedup"] = r["clips_per_s"] / base if base else None
    return rows


def goal_lines(rows: list[dict], device_name: str) -> list[str]:
    graphs = [r for r in rows if r["mode"].endswith("graph")]
    graph = max(graphs, key=lambda r: r["speedup"]) if graphs else None  # the fastest captured mode
    if graph is None:
        return [f"goals (H100): >= {GOAL_SPEEDUP}x fp32 eager and MFU >= {GOAL_MFU:.0%}: not measurable without a GPU"]
    where = f"on {device_name}" + ("" if "H100" in device_name else " (the goals are set for an H100)")
    return [
        f"{graph['mode']} >= {GOAL_SPEEDUP}x fp32-eager {where}: {graph['speedup']:.2f}x -> "
        + ("met" if graph["speedup"] >= GOAL_SPEEDUP else "NOT met"),
        f"MFU >= {GOAL_MFU:.0%} {where}: {graph['mfu']:.1%} -> " + ("met" if graph["mfu"] >= GOAL_MFU else "NOT met"),
    ]


# ----------------------------------------------------------------- measuring


def count_step_flops(name: str, batch: int) -> float:
    """FLOPs of one training step's forward + backward, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = tpn.get_config(name)
    with torch.device("meta"):
        model = tpn.create_model(name)
        x = torch.empty(batch, *cfg.input_shape)
        y = torch.zeros(batch, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        LossModule(model, cfg.recipe.aux_weight)(x, y).backward()
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, rounds: int = 5) -> float:
    """Measured dense matmul FLOP/s (n x n x n), median of rounds after a warm-up."""
    a = torch.randn(n, n).to(device, dtype)
    b = torch.randn(n, n).to(device, dtype)
    reps = 20 if device.type == "cuda" else 2
    times = []
    for r in range(rounds + 1):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        _sync(device)
        if r:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 * reps / statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(name: str, mode: str, device: torch.device, batch: int) -> Callable[[], None]:
    """A closure running one full training step of `mode` on fixed synthetic clips."""
    cfg = tpn.get_config(name)
    torch.manual_seed(0)
    model = tpn.create_model(name).to(device)
    opts = step_options(mode, device.type, cfg.backbone == "slowonly")
    if opts.channels_last:
        model.to(memory_format=torch.channels_last_3d)
    opt = build_optimizer(list(model.parameters()), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4,
                          device=device)  # fmt: skip
    step = TrainStep(LossModule(model, cfg.recipe.aux_weight), opt, opts, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *cfg.input_shape, generator=g).to(device)  # drawn on the CPU, then moved
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    if "notf32" not in mode:
        return lambda: step(x, y)

    def strict() -> None:
        conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            step(x, y)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm

    return strict


def time_modes(steps: dict[str, Callable[[], None]], device: torch.device, warmup: int, rounds: int,
               steps_per_round: int) -> dict[str, list[float]]:  # fmt: skip
    """Seconds per step of each mode, one list entry per round; modes alternate within a round."""
    for fn in steps.values():
        for _ in range(warmup):  # also the graph mode's eager warm-up and capture
            fn()
    _sync(device)
    out: dict[str, list[float]] = {m: [] for m in steps}
    for _ in range(rounds):
        for mode, fn in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(steps_per_round):
                fn()
            _sync(device)
            out[mode].append((time.perf_counter() - t0) / steps_per_round)
    return out


def cpu_has_native_bf16() -> bool:
    from benchmarks.infer import cpu_has_native_bf16 as has

    return has()


# ----------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default="tpn_r50_f8s8", help="zoo model (default %(default)s)")
    p.add_argument("--batch", type=int, help="clips per step, the same in every mode (default: 16 on GPU, 2 on CPU)")
    p.add_argument("--rounds", type=int, help="timed rounds per mode (default: 5 on GPU, 2 on CPU)")
    p.add_argument("--steps", type=int, help="steps per round (default: 10 on GPU, 1 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed steps per mode first (default: 5 on GPU, >= 4 for the graph capture; 1 on CPU)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default %(default)s)")
    p.add_argument("--tiny", action="store_true", help="CI smoke run: tpn_tiny_f8s4, batch 2, 2 rounds of 1 step")
    p.add_argument("--name", default="train", help="results name under benchmarks/results/ (default %(default)s)")
    return p


def resolve(args: argparse.Namespace) -> tuple[torch.device, str, int, int, int, int]:
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))  # fmt: skip
    gpu = device.type == "cuda"
    name = "tpn_tiny_f8s4" if args.tiny else args.model
    batch = args.batch or (2 if args.tiny or not gpu else 16)
    rounds = args.rounds or (2 if args.tiny or not gpu else 5)
    steps = args.steps or (1 if args.tiny or not gpu else 10)
    warmup = args.warmup if args.warmup is not None else (5 if gpu else 1)
    return device, name, batch, rounds, steps, warmup


def run(args: argparse.Namespace) -> dict:
    device, name, batch, rounds, steps_per_round, warmup = resolve(args)
    tpn.get_config(name)  # a clear error for unknown names
    notes = []
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        cudnn = torch.backends.cudnn.version()
        if cudnn is None or cudnn < MIN_CUDNN:
            raise RuntimeError(f"cuDNN {cudnn} < {MIN_CUDNN}: bf16 3D convs are wrong or slow with it; use a torch build with cuDNN >= 9.15")
    peak_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = matmul_peak(device, peak_dtype, 8192 if device.type == "cuda" else 2048)
    flops = count_step_flops(name, batch)
    modes = modes_for(device.type, cpu_has_native_bf16())
    if device.type == "cpu" and "bf16-eager" not in modes:
        notes.append("bf16 skipped: this CPU has no native bf16 (emulated bf16 convs are far slower than fp32)")
    print(f"{name}, batch {batch}, {device}: {flops / batch / 1e9:.1f} GFLOP per clip (fwd+bwd); "
          f"matmul peak {peak / 1e12:.2f} TFLOP/s ({str(peak_dtype).split('.')[-1]})", flush=True)  # fmt: skip
    steps = {m: make_step(name, m, device, batch) for m in modes}
    times = time_modes(steps, device, warmup, rounds, steps_per_round)
    rows = []
    for mode, secs in times.items():
        med = statistics.median(secs)
        rows.append({"mode": mode, "model": name, "batch": batch, "device": str(device), "median_step_ms": 1e3 * med,
                     "clips_per_s": batch / med, "tflops_per_s": flops / med / 1e12, "mfu": mfu(flops, med, peak),
                     "rounds": len(secs)})  # fmt: skip
    add_speedups(rows)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    return {
        "rows": rows, "flops_per_step": flops, "gflops_per_clip": flops / batch / 1e9,
        "peak_matmul_tflops": peak / 1e12, "peak_dtype": str(peak_dtype),
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "tf32_defaults": {"cudnn_conv": torch.backends.cudnn.allow_tf32,
                          "matmul": torch.backends.cuda.matmul.allow_tf32},  # what fp32-eager ran with
        "goals": goal_lines(rows, device_name), "notes": notes,
    }  # fmt: skip


def print_table(payload: dict) -> None:
    print(f"{'mode':<18}{'clips/s':>10}{'step ms':>11}{'TFLOP/s':>10}{'MFU':>8}{'x fp32':>9}")
    for r in payload["rows"]:
        print(f"{r['mode']:<18}{r['clips_per_s']:>10.2f}{r['median_step_ms']:>11.1f}{r['tflops_per_s']:>10.3f}"
              f"{r['mfu']:>8.1%}{r['speedup']:>8.2f}x")  # fmt: skip
    for line in payload["goals"] + payload["notes"]:
        print(f"- {line}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        payload = run(args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_table(payload)
    path = write_results(args.name, payload)
    rows = payload["rows"]
    bar_plot(results_path(args.name, ".png"), [r["mode"] for r in rows], [r["clips_per_s"] for r in rows],
             ylabel="training clips/s", title=f"{rows[0]['model']}, batch {rows[0]['batch']}, {rows[0]['device']}")  # fmt: skip
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
