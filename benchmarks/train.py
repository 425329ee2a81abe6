"""Training-step speed: clips/s and MFU of the step's modes, each proven to run as named.

    python -m benchmarks.train              # tpn_r50_f8s8; GPU: batch 16, every GPU mode; CPU: batch 2, eager
    python -m benchmarks.train --batch 32   # another batch (the same for every mode)
    python -m benchmarks.train --tiny       # CI smoke run: the tiny TPN, batch 2, a few steps
    python -m benchmarks.train --compile-presets coordesc mm1x1 autotune --profile bf16-cl3d-compile-graph

A mode is a precision followed by options, joined by dashes:
  fp32 | bf16     fp32, or bf16 autocast
  notf32          TF32 off everywhere (strict fp32, GPU only; for reference)
  cl3d            channels_last_3d (NDHWC) activations and conv weights
  nativebn        nn.BatchNorm3d's own kernels instead of tpn.layers.BatchNorm3d's NDHWC path
  bneval          frozen BatchNorm (BN in eval mode, affine trained): what --bn-eval fine-tuning runs
  compile[=P]     torch.compile'd forward + loss with preset P of tpn.engine.COMPILE_PRESETS
                  (default: tpn.engine.DEFAULT_COMPILE); compiled during the warm-up
  graph           the whole step captured in one CUDA graph (tpn.engine.TrainStep), GPU only
The GPU rows: fp32-eager (the peer toolkits' recipe: fp32, NCDHW, PyTorch's defaults, which let
cuDNN use TF32; the baseline), fp32-notf32-eager, bf16-cl3d-nativebn, bf16-cl3d, bf16-cl3d-graph,
bf16-cl3d-bneval-graph, bf16-cl3d-compile-graph, plus bf16-cl3d-compile=P-graph per --compile-presets.
On a CPU: fp32-eager, fp32-cl3d, and bf16-eager where the CPU has native bf16.

Each mode runs the full training step of tpn.train (forward, main + aux loss, backward, clipping at
40, SGD). On a CPU, modes alternate round by round so a busy machine slows them alike; on a GPU each
mode runs its rounds in turn and is freed before the next (captured graphs keep their activations).
The median round is reported. FLOPs are counted from the model (torch.utils.flop_counter, forward +
backward of one step, on the meta device); MFU is achieved FLOP/s over the measured bf16 (GPU) or
fp32 (CPU) matmul rate of the same device.

Proof of mode: every row records the mode the step actually ran as (eager, cuda-graph, compiled,
compiled+cuda-graph), its graph replays and eager steps; a row whose requested capture fell back to
eager, or whose replays do not add up, is marked failed and excluded from the ratios (exit code 1).

Layout copies: for each channels_last_3d row, one eager step of the same configuration runs under the
PyTorch profiler (CPU-side op records with shapes and strides, read from its Chrome trace, on either
device) and every
`aten::copy_` between tensors of 4+ dims whose dimension order differs (NCDHW <-> NDHWC and the like)
is counted, attributed to the op that made it: `layout_copies` counts the model's activations and
gradients (the goal: zero), `input_layout_copies` the one conversion of the loader's NCDHW batch,
`weight_layout_copies` conv weight gradients that a conv kernel computes in another layout and then
converts (oneDNN does this on a CPU). Dtype casts (same layout) are counted apart. On a CPU the count
depends on the conv backend PyTorch picks: with one torch thread small unstrided convs run its NCDHW
reference conv3d, which copies; with two or more, oneDNN's channels-last convs. Inside
torch.compile'd code Inductor lays tensors out itself: those rows show their copy kernels in the
profile instead.

--profile MODE...: after timing, 3 steps of each listed mode under the profiler; CUDA kernels (or
CPU ops, by self time) grouped into convolution/matmul, normalization, elementwise, reduction,
pooling, copies, optimizer; written to <name>-profile.txt and the JSON.

Goals on an H100/H200, same run: the fastest compiled + captured mode >= 3x fp32-eager and MFU >=
35%; the fastest uncompiled captured mode >= 2x; zero layout copies in every cl3d row.
Writes benchmarks/results/<name>.json and <name>.png (and <name>-profile.txt with --profile).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import re
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

import tpn
from benchmarks.common import bar_plot, cpu_has_native_bf16, results_path, sync, write_results
from export.validate import strict_fp32  # TF32 off for convs and matmuls, restored after
from tpn.engine import (
    COMPILE_PRESETS,
    DEFAULT_COMPILE,
    MIN_CUDNN,
    LossModule,
    TrainStep,
    build_optimizer,
    compile_options,
)
from pipeline.io.files import atomic_write_bytes
from tpn.cli import add_device_arg
from tpn.distributed import DistEnv, resolve_torch_device
from tpn.layers import set_batchnorm_impl, train_mode
from benchmarks.flops import count_step_flops, matmul_peak
from benchmarks.kernels import categorize, category_table
from benchmarks.layout_copies import MixedLayoutOps, classify_copies, trace_records
from benchmarks.train_modes import (
    WARMUP_ITERS,
    ModeSpec,
    add_speedups,
    goal_lines,
    mfu,
    mode_problem,
    mode_step_options,
    modes_for,
    parse_mode,
)


# ----------------------------------------------------------------- measuring


@dataclass
class Contender:
    """One mode's training step on fixed synthetic clips."""

    mode: str
    spec: ModeSpec
    step: TrainStep
    x: Tensor
    y: Tensor
    calls: int = 0

    def __call__(self) -> None:
        self.calls += 1
        with strict_fp32() if self.spec.notf32 else contextlib.nullcontext():
            self.step(self.x, self.y)


def make_bench_model(name: str, spec: ModeSpec, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = tpn.create_model(name).to(device)
    if spec.cl3d and tpn.get_config(name).backbone == "slowonly":
        model.to(memory_format=torch.channels_last_3d)
    set_batchnorm_impl(model, "native" if spec.bn == "native" else "auto")
    return train_mode(model, bn_eval=spec.bn == "eval")  # frozen statistics, as tpn.train --bn-eval


def make_contender(name: str, mode: str, device: torch.device, batch: int) -> Contender:
    cfg = tpn.get_config(name)
    spec = parse_mode(mode)
    model = make_bench_model(name, spec, device)
    opt = build_optimizer(
        list(model.parameters()), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4, device=device
    )
    step = TrainStep(
        LossModule(model, cfg.recipe.aux_weight), opt, mode_step_options(mode, cfg.backbone == "slowonly"), device
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, *cfg.input_shape, generator=g).to(device)  # NCDHW, as the loader gives; drawn on the CPU
    y = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    return Contender(mode, spec, step, x, y)


def timed_rounds(c: Contender, device: torch.device, rounds: int, steps: int) -> list[float]:
    out = []
    for _ in range(rounds):
        out.append(_time_round(c, device, steps))
    return out


def _time_round(c: Contender, device: torch.device, steps: int) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        c()
    sync(device)
    return (time.perf_counter() - t0) / steps


def _profiler_activities(device: torch.device) -> list:
    from torch.profiler import ProfilerActivity

    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def count_layout_copies(name: str, mode: str, device: torch.device, batch: int) -> dict:
    """Layout copies of one eager step of `mode`'s configuration (graph and compile off), after one warm-up step."""
    from torch.profiler import ProfilerActivity, profile

    twin = re.sub(r"-(graph|compile(=\w+)?)", "", mode)  # the same step, run op by op
    c = make_contender(name, twin, device, batch)
    c()
    sync(device)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        c()
        sync(device)
    out = classify_copies(trace_records(prof))
    c.x = c.step._prepare(c.x)  # given as NDHWC: the check below sees the model's ops only
    with MixedLayoutOps() as mixed:
        c()
        sync(device)
    out["mixed_layout_ops"] = dict(mixed.ops.most_common())
    out["layout_counted_on"] = twin
    return out


def kernel_rows(prof, device: torch.device, steps: int) -> list[dict]:
    """CUDA kernels (GPU) or CPU ops by self time (CPU), per step, with their category."""
    from torch.autograd import DeviceType

    rows = []
    for e in prof.key_averages():
        if device.type == "cuda":
            if e.device_type != DeviceType.CUDA or e.self_device_time_total <= 0:
                continue
            us = e.self_device_time_total
        else:
            if e.self_cpu_time_total <= 0 or e.key.startswith(("ProfilerStep", "tpn.")):
                continue
            us = e.self_cpu_time_total
        rows.append(
            {
                "name": e.key,
                "category": categorize(e.key),
                "calls_per_step": e.count / steps,
                "ms_per_step": us / 1e3 / steps,
            }
        )
    return sorted(rows, key=lambda r: -r["ms_per_step"])


def profile_contender(c: Contender, device: torch.device, steps: int = 3) -> tuple[dict, str]:
    """Kernel table by category of `steps` steps of `c` (after its timing), and a text rendering."""
    from torch.profiler import profile

    def run(fn: Callable[[], None]):
        with profile(activities=_profiler_activities(device)) as prof:
            for _ in range(steps):
                fn()
            sync(device)
        return prof

    prof, how = run(c), "the timed step"
    rows = kernel_rows(prof, device, steps)
    if not rows and c.step.graph is not None:  # no kernel records from graph replays: the same step, uncaptured
        prof, how = (
            run(lambda: c.step._step(c.step._prepare(c.x), c.y)),
            "the captured step's code run outside the graph",
        )
        rows = kernel_rows(prof, device, steps)
    what = "CUDA kernels" if device.type == "cuda" else "CPU ops (self time)"
    payload = {
        "mode": c.mode,
        "steps": steps,
        "what": what,
        "profiled": how,
        "ms_per_step": sum(r["ms_per_step"] for r in rows),
        "categories": category_table(rows),
        "top": rows[:30],
    }
    return payload, profile_text(payload)


def profile_text(p: dict) -> str:
    lines = [
        f"## {p['mode']}: {p['what']}, {p['steps']} steps of {p['profiled']}; {p['ms_per_step']:.2f} ms per step",
        "",
        f"{'category':<20}{'ms/step':>10}{'share':>8}{'calls/step':>12}",
    ]
    for r in p["categories"]:
        lines.append(f"{r['category']:<20}{r['ms_per_step']:>10.3f}{r['share']:>8.1%}{r['calls_per_step']:>12.1f}")
    lines += ["", f"{'ms/step':>9}{'calls/step':>12}  {'category':<19} name"]
    for r in p["top"]:
        lines.append(f"{r['ms_per_step']:>9.3f}{r['calls_per_step']:>12.1f}  {r['category']:<19} {r['name'][:110]}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- one run


@dataclass(frozen=True)
class Plan:
    name: str
    device: torch.device
    batch: int
    rounds: int
    steps: int
    warmup: int
    modes: tuple[str, ...]
    profile: tuple[str, ...]
    alternate: bool  # CPU: modes alternate round by round; GPU: one mode after the other, freed in between


def row_for(c: Contender, secs: list[float], plan: Plan, flops: float, peak: float) -> dict:
    med = statistics.median(secs)
    report = c.step.report().to_dict()
    problem = mode_problem(c.spec.requested, report, c.calls)
    return {
        "mode": c.mode,
        "model": plan.name,
        "batch": plan.batch,
        "device": str(plan.device),
        "median_step_ms": 1e3 * med,
        "clips_per_s": plan.batch / med,
        "tflops_per_s": flops / med / 1e12,
        "mfu": mfu(flops, med, peak),
        "rounds": len(secs),
        "requested": c.spec.requested,
        "ran_as": report["mode"],
        "graph_replays": report["graph_replays"],
        "eager_steps": report["eager_steps"],
        "ok": problem is None,
        "problem": problem,
        "bn": c.spec.bn,
        "compile": report["compile"],
        "compile_options": report["compile_options"],
        "compile_s": report["compile_s"],
    }


def finish_row(
    c: Contender, secs: list[float], plan: Plan, flops: float, peak: float, layout: dict, profiles: dict
) -> dict:
    row = row_for(c, secs, plan, flops, peak)
    if c.spec.cl3d and c.spec.compile is None:
        key = (c.spec.bf16, c.spec.notf32, c.spec.bn)
        if key not in layout:
            try:
                layout[key] = count_layout_copies(plan.name, c.mode, plan.device, plan.batch)
            except RuntimeError as e:  # a profiler without input strides: say so, keep the timing
                layout[key] = {"layout_copies": None, "layout_note": str(e)}
        row.update(layout[key])
    else:
        row["layout_copies"] = None
    if c.mode in plan.profile:
        profiles[c.mode] = profile_contender(c, plan.device)
    return row


def measure(plan: Plan, flops: float, peak: float) -> tuple[list[dict], dict]:
    layout: dict = {}
    profiles: dict[str, tuple[dict, str]] = {}
    if plan.alternate:
        contenders = [make_contender(plan.name, m, plan.device, plan.batch) for m in plan.modes]
        for c in contenders:
            for _ in range(plan.warmup):  # also the graph modes' eager warm-up and capture
                c()
        secs: dict[str, list[float]] = {c.mode: [] for c in contenders}
        for _ in range(plan.rounds):
            for c in contenders:
                secs[c.mode].append(_time_round(c, plan.device, plan.steps))
        rows = [finish_row(c, secs[c.mode], plan, flops, peak, layout, profiles) for c in contenders]
        return rows, profiles
    rows = []
    for mode in plan.modes:
        c = make_contender(plan.name, mode, plan.device, plan.batch)
        for _ in range(plan.warmup):
            c()
        rows.append(
            finish_row(c, timed_rounds(c, plan.device, plan.rounds, plan.steps), plan, flops, peak, layout, profiles)
        )
        print(f"  {mode}: {rows[-1]['clips_per_s']:.2f} clips/s, ran as {rows[-1]['ran_as']}", flush=True)
        del c
        free_device_memory(plan.device)
    return rows, profiles


def free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def compile_only(plan: Plan) -> list[dict]:
    """Compile (and capture) each compiled mode without timing it: fills Inductor's caches, records compile time."""
    out = []
    for mode in plan.modes:
        spec = parse_mode(mode)
        if spec.compile is None:
            continue
        c = make_contender(plan.name, mode, plan.device, plan.batch)
        for _ in range(max(plan.warmup, WARMUP_ITERS + 1 if spec.graph else 1)):
            c()
        sync(plan.device)
        report = c.step.report().to_dict()
        out.append(
            {
                "mode": mode,
                "batch": plan.batch,
                "ran_as": report["mode"],
                "compile": report["compile"],
                "compile_options": report["compile_options"],
                "compile_s": report["compile_s"],
                "problem": mode_problem(spec.requested, report, c.calls),
            }
        )
        print(f"  {mode}: compiled in {_f(report['compile_s'], '.1f')} s, ran as {report['mode']}", flush=True)
        del c
        free_device_memory(plan.device)
    return out


# ----------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="tpn_r50_f8s8", help="zoo model (default %(default)s)")
    p.add_argument("--batch", type=int, help="clips per step, the same in every mode (default: 16 on GPU, 2 on CPU)")
    p.add_argument("--rounds", type=int, help="timed rounds per mode (default: 5 on GPU, 2 on CPU)")
    p.add_argument("--steps", type=int, help="steps per round (default: 10 on GPU, 1 on CPU)")
    p.add_argument(
        "--warmup",
        type=int,
        help="untimed steps per mode first (default: 5 on GPU, >= 4 for the graph capture; 1 on CPU)",
    )
    add_device_arg(p)
    p.add_argument("--modes", nargs="+", metavar="MODE", help="the rows to run (default: every mode of the device)")
    p.add_argument(
        "--compile-presets",
        nargs="+",
        default=[],
        metavar="P",
        choices=list(COMPILE_PRESETS),
        help=f"add a bf16-cl3d-compile=P-graph row per preset ({', '.join(COMPILE_PRESETS)})",
    )
    p.add_argument(
        "--profile",
        nargs="+",
        default=[],
        metavar="MODE",
        help="after timing, profile 3 steps of these modes: kernel table by category",
    )
    p.add_argument(
        "--cudnn-benchmark-limit",
        type=int,
        metavar="N",
        help="cuDNN algorithms tried per convolution by its benchmark (PyTorch default 10; 0 = all)",
    )
    p.add_argument(
        "--compile-only",
        action="store_true",
        help="compile and capture the compiled modes without timing them (fills Inductor's caches; "
        "records compile times)",
    )
    p.add_argument("--tiny", action="store_true", help="CI smoke run: tpn_tiny_f8s4, batch 2, 2 rounds of 1 step")
    p.add_argument("--name", default="train", help="results name under benchmarks/results/ (default %(default)s)")
    return p


def resolve(args: argparse.Namespace) -> Plan:
    device = resolve_torch_device(args.device, DistEnv())  # one process: 'cuda' is GPU 0
    gpu = device.type == "cuda"
    name = "tpn_tiny_f8s4" if args.tiny else args.model
    tpn.get_config(name)  # a clear error for unknown names
    modes = (
        list(args.modes)
        if args.modes
        else modes_for(device.type, not gpu and cpu_has_native_bf16(), tuple(args.compile_presets))
    )
    if args.modes:
        modes += [f"bf16-cl3d-compile={p}-graph" for p in args.compile_presets]
    for m in [*modes, *args.profile]:
        parse_mode(m)  # a clear error for unknown modes
    unknown = [m for m in args.profile if m not in modes]
    if unknown:
        raise ValueError(f"--profile {' '.join(unknown)}: not among the modes run ({', '.join(modes)})")
    return Plan(
        name=name,
        device=device,
        batch=args.batch or (2 if args.tiny or not gpu else 16),
        rounds=args.rounds or (2 if args.tiny or not gpu else 5),
        steps=args.steps or (1 if args.tiny or not gpu else 10),
        warmup=args.warmup if args.warmup is not None else (5 if gpu else 1),
        modes=tuple(dict.fromkeys(modes)),
        profile=tuple(args.profile),
        alternate=not gpu,
    )


def set_up_device(plan: Plan, cudnn_limit: int | None) -> None:
    if plan.device.type != "cuda":
        return
    torch.backends.cudnn.benchmark = True
    if cudnn_limit is not None:
        torch.backends.cudnn.benchmark_limit = cudnn_limit
    cudnn = torch.backends.cudnn.version()
    if cudnn is None or cudnn < MIN_CUDNN:
        raise RuntimeError(
            f"cuDNN {cudnn} < {MIN_CUDNN}: bf16 3D convs are wrong or slow with it; "
            "use a torch build with cuDNN >= 9.15"
        )


@dataclass
class RunResult:
    """What `run` measured: the JSON payload, and the profile rendered as text (the JSON holds it as data)."""

    payload: dict
    profile_text: str = ""


def run(args: argparse.Namespace) -> RunResult:
    plan = resolve(args)
    set_up_device(plan, args.cudnn_benchmark_limit)
    settings = {
        "cudnn_benchmark_limit": torch.backends.cudnn.benchmark_limit if plan.device.type == "cuda" else None,
        "default_compile": DEFAULT_COMPILE,
        "compile_presets": {p: compile_options(p) for p in COMPILE_PRESETS},
    }
    if args.compile_only:
        return RunResult({"compile_only": compile_only(plan), "model": plan.name, "batch": plan.batch, **settings})
    notes = []
    if plan.device.type == "cpu" and not cpu_has_native_bf16() and not args.modes:
        notes.append("bf16 skipped: this CPU has no native bf16 (emulated bf16 convs are far slower than fp32)")
    peak_dtype = torch.bfloat16 if plan.device.type == "cuda" else torch.float32
    peak = matmul_peak(plan.device, peak_dtype, 8192 if plan.device.type == "cuda" else 2048)
    flops = count_step_flops(plan.name, plan.batch)
    print(
        f"{plan.name}, batch {plan.batch}, {plan.device}: {flops / plan.batch / 1e9:.1f} GFLOP per clip (fwd+bwd); "
        f"matmul peak {peak / 1e12:.2f} TFLOP/s ({str(peak_dtype).split('.')[-1]})",
        flush=True,
    )
    rows, profiles = measure(plan, flops, peak)
    add_speedups(rows)
    device_name = torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else "CPU"
    payload = {
        "rows": rows,
        "flops_per_step": flops,
        "gflops_per_clip": flops / plan.batch / 1e9,
        "peak_matmul_tflops": peak / 1e12,
        "peak_dtype": str(peak_dtype),
        "cudnn": torch.backends.cudnn.version() if plan.device.type == "cuda" else None,
        "tf32_defaults": {
            "cudnn_conv": torch.backends.cudnn.allow_tf32,
            "matmul": torch.backends.cuda.matmul.allow_tf32,
        },  # what fp32-eager ran with
        **settings,
        "goals": goal_lines(rows, device_name),
        "notes": notes,
        "failed_rows": [r["mode"] for r in rows if not r["ok"]],
        "profiles": {m: p for m, (p, _) in profiles.items()},
    }
    return RunResult(payload, "".join(text for _, text in profiles.values()))


def _f(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_table(payload: dict) -> None:
    print(
        f"{'mode':<30}{'ran as':>20}{'replays':>8}{'clips/s':>9}{'step ms':>9}{'TFLOP/s':>9}{'MFU':>7}"
        f"{'x fp32':>8}{'layout copies':>14}"
    )
    for r in payload["rows"]:
        speed = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        print(
            f"{r['mode']:<30}{r['ran_as']:>20}{r['graph_replays']:>8}{r['clips_per_s']:>9.2f}{r['median_step_ms']:>9.1f}"
            f"{r['tflops_per_s']:>9.3f}{r['mfu']:>7.1%}{speed:>8}{_f(r['layout_copies'], 'd'):>14}"
        )
    for r in payload["rows"]:
        if r["layout_copies"] is not None:
            print(
                f"- {r['mode']}: {r['layout_copies']} layout copies per step "
                f"(by op: {r['layout_copies_by_op'] or '-'}); "
                f"input conversions {r['input_layout_copies']}, conv weight-gradient conversions "
                f"{r['weight_layout_copies']}, dtype casts {r['dtype_casts']}; mixed-layout ops: "
                f"{r['mixed_layout_ops'] or '-'} (counted on {r['layout_counted_on']})"
            )
        if r.get("layout_note"):
            print(f"- {r['mode']}: layout copies not counted: {r['layout_note']}")
        if r["compile_s"] is not None:
            print(
                f"- {r['mode']}: compile preset {r['compile']} {r['compile_options']}: "
                f"first step {r['compile_s']:.1f} s"
            )
        if not r["ok"]:
            print(f"- FAILED {r['mode']}: {r['problem']}")
    for line in payload["goals"] + payload["notes"]:
        print(f"- {line}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    payload, text = result.payload, result.profile_text
    if args.compile_only:
        print(f"results: {write_results(args.name, payload)}")
        return 1 if any(r["problem"] for r in payload["compile_only"]) else 0
    print_table(payload)
    path = write_results(args.name, payload)
    if text:
        prof_path = results_path(f"{args.name}-profile", ".txt")
        atomic_write_bytes(prof_path, text.encode())  # a rendering of the JSON's "profiles"
        print(text + f"profile: {prof_path}")
    rows = [r for r in payload["rows"] if r["ok"]]
    if rows:
        bar_plot(
            results_path(args.name, ".png"),
            [r["mode"] for r in rows],
            [r["clips_per_s"] for r in rows],
            ylabel="training clips/s",
            title=f"{rows[0]['model']}, batch {rows[0]['batch']}, {rows[0]['device']}",
        )
    print(f"results: {path}")
    if payload["failed_rows"]:
        print(f"error: rows that did not run as named: {', '.join(payload['failed_rows'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
