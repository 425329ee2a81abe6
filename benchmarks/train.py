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
import json
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import tpn
from benchmarks.common import GOAL_TRAIN_SPEEDUP, bar_plot, cpu_has_native_bf16, results_path, sync, write_results
from export.validate import strict_fp32  # TF32 off for convs and matmuls, restored after
from tpn.engine import (
    COMPILE_PRESETS,
    DEFAULT_COMPILE,
    INPUT_TO_NDHWC,
    MIN_CUDNN,
    LossModule,
    StepOptions,
    TrainStep,
    build_optimizer,
    compile_options,
    step_mode,
)
from pipeline.fileio import atomic_write_bytes
from tpn.cli import add_device_arg
from tpn.distributed import DistEnv, resolve_torch_device
from tpn.layers import set_batchnorm_impl

BASELINE = "fp32-eager"
GOAL_SPEEDUP, GOAL_MFU, GOAL_GRAPH_SPEEDUP = GOAL_TRAIN_SPEEDUP, 0.35, 2.0  # the goals on an H100/H200
WARMUP_ITERS = 3  # TrainStep's eager steps before capture


# ----------------------------------------------------------------- modes (pure)


@dataclass(frozen=True)
class ModeSpec:
    bf16: bool
    notf32: bool = False
    cl3d: bool = False
    bn: str = "auto"  # "auto" (tpn.layers.BatchNorm3d), "native" (nn.BatchNorm3d's kernels), "eval" (frozen)
    compile: str | None = None  # a COMPILE_PRESETS name
    graph: bool = False

    @property
    def requested(self) -> str:
        return step_mode(self.compile is not None, self.graph)


def parse_mode(mode: str) -> ModeSpec:
    """'bf16-cl3d-compile=mm1x1-graph' -> ModeSpec; a clear error for anything unknown."""
    precision, *flags = mode.split("-")
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"mode {mode!r} must start with fp32 or bf16")
    kw: dict = {"bf16": precision == "bf16"}
    for flag in flags:
        name, _, preset = flag.partition("=")
        if flag in ("notf32", "cl3d", "graph"):
            kw[flag] = True
        elif flag in ("nativebn", "bneval"):
            kw["bn"] = "native" if flag == "nativebn" else "eval"
        elif name == "compile":
            kw["compile"] = preset or DEFAULT_COMPILE
            if kw["compile"] not in COMPILE_PRESETS:
                raise ValueError(
                    f"mode {mode!r}: unknown compile preset {preset!r}; choose from {', '.join(COMPILE_PRESETS)}"
                )
        elif flag != "eager":
            raise ValueError(
                f"mode {mode!r}: unknown option {flag!r} (notf32, cl3d, nativebn, bneval, compile[=P], graph, eager)"
            )
    return ModeSpec(**kw)


def modes_for(device: str, native_bf16_cpu: bool, presets: tuple[str, ...] = ()) -> list[str]:
    if device == "cuda":
        return [
            "fp32-eager",
            "fp32-notf32-eager",
            "bf16-cl3d-nativebn",
            "bf16-cl3d",
            "bf16-cl3d-graph",
            "bf16-cl3d-bneval-graph",
            "bf16-cl3d-compile-graph",
            *(f"bf16-cl3d-compile={p}-graph" for p in presets if p != DEFAULT_COMPILE),
        ]
    return ["fp32-eager", "fp32-cl3d", *(["bf16-eager"] if native_bf16_cpu else [])]


def mode_step_options(mode: str, is_3d: bool) -> StepOptions:
    spec = parse_mode(mode)
    return StepOptions(
        clip_grad=40.0,
        amp_dtype=torch.bfloat16 if spec.bf16 else None,
        channels_last=spec.cl3d and is_3d,  # TSM's 2D convs stay NCHW
        cuda_graph=spec.graph,
        compile=spec.compile,
        warmup_iters=WARMUP_ITERS,
    )


def mode_problem(requested: str, report: dict, calls: int) -> str | None:
    """Why a row does not show what its name says (None: it ran as requested, every step accounted for)."""
    if report["mode"] != requested:
        return f"requested {requested}, ran {report['mode']}: {report['fallback']}"
    if report["steps"] != calls:
        return f"{calls} calls but {report['steps']} steps recorded"
    if requested.endswith("cuda-graph"):
        expected = (calls - WARMUP_ITERS, WARMUP_ITERS)  # the capture step is trained on by its first replay
        if (report["graph_replays"], report["eager_steps"]) != expected:
            return (
                f"{report['graph_replays']} graph replays and {report['eager_steps']} eager steps for {calls} "
                f"calls (expected {expected[0]} and {expected[1]})"
            )
    elif report["graph_replays"]:
        return f"{report['graph_replays']} graph replays in a mode without a graph"
    return None


def mfu(flops_per_step: float, seconds_per_step: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved FLOP/s over the device's measured matmul FLOP/s."""
    return flops_per_step / seconds_per_step / peak_flops


def add_speedups(rows: list[dict]) -> list[dict]:
    base = next((r["clips_per_s"] for r in rows if r["mode"] == BASELINE and r.get("ok", True)), None)
    for r in rows:
        r["speedup"] = r["clips_per_s"] / base if base and r.get("ok", True) else None
    return rows


def goal_lines(rows: list[dict], device_name: str) -> list[str]:
    """The goals, judged on the rows that ran as named (failed rows never count)."""
    ok = [r for r in rows if r.get("ok", True) and r.get("speedup") is not None]
    compiled = [r for r in ok if r["mode"].endswith("graph") and "compile" in r["mode"]]
    plain = [r for r in ok if r["mode"].endswith("graph") and "compile" not in r["mode"]]
    if not compiled and not plain:
        return [
            f"goals (H100/H200): >= {GOAL_SPEEDUP}x fp32 eager and MFU >= {GOAL_MFU:.0%}: not measurable "
            "without a captured mode (GPU only)"
        ]
    gpu = any(k in device_name for k in ("H100", "H200"))
    where = f"on {device_name}" + ("" if gpu else " (the goals are set for an H100/H200)")
    lines = []
    best = max(compiled or plain, key=lambda r: r["speedup"])  # the fastest captured mode
    lines.append(
        f"{best['mode']} >= {GOAL_SPEEDUP}x fp32-eager {where}: {best['speedup']:.2f}x -> "
        + ("met" if best["speedup"] >= GOAL_SPEEDUP else "NOT met")
    )
    lines.append(
        f"MFU >= {GOAL_MFU:.0%} {where}: {best['mfu']:.1%} -> " + ("met" if best["mfu"] >= GOAL_MFU else "NOT met")
    )
    if plain:
        g = max(plain, key=lambda r: r["speedup"])
        lines.append(
            f"{g['mode']} (uncompiled) >= {GOAL_GRAPH_SPEEDUP}x fp32-eager: {g['speedup']:.2f}x -> "
            + ("met" if g["speedup"] >= GOAL_GRAPH_SPEEDUP else "NOT met")
        )
    return lines + layout_goal_lines(rows)


def layout_goal_lines(rows: list[dict]) -> list[str]:
    counted = [r for r in rows if r.get("layout_copies") is not None]
    if not counted:
        return []
    worst = max(counted, key=lambda r: r["layout_copies"])
    verdict = "met" if worst["layout_copies"] == 0 else f"NOT met ({worst['mode']}: {worst['layout_copies']})"
    return [f"zero layout copies per step in every channels_last_3d row: {verdict}"]


# ----------------------------------------------------------------- layout copies (pure over profiler events)

_COPY_FAMILY = {
    "aten::copy_",
    "aten::clone",
    "aten::contiguous",
    "aten::_to_copy",
    "aten::to",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::reshape",
    "aten::_reshape_alias",
}


def dim_order(shape: list[int], strides: list[int]) -> tuple[int, ...]:
    """The dims that hold data, outermost first: (0, 1, 2, 3, 4) is NCDHW, (0, 2, 3, 4, 1) NDHWC."""
    dims = [d for d in range(len(shape)) if shape[d] > 1 and strides[d] != 0]  # size-1 / broadcast dims carry no layout
    return tuple(sorted(dims, key=lambda d: -strides[d]))


def _cause(evt) -> tuple[str, object | None]:
    """The op a copy was made for (the nearest enclosing op outside the copy family), and its event.

    In the backward the autograd node is named too, e.g.
    'aten::max_pool3d_with_indices_backward in MaxPool3DWithIndicesBackward0'.
    """
    op, p = None, evt.cpu_parent
    while p is not None:
        if p.name == INPUT_TO_NDHWC:
            return "input", p
        if p.name.startswith("autograd::engine::evaluate_function: "):
            node = p.name.split(": ", 1)[1]
            return (f"{op.name} in {node}" if op is not None else node), op
        if op is None and p.name not in _COPY_FAMILY:
            op = p
        p = p.cpu_parent
    return (op.name if op is not None else "top level"), op


@dataclass
class OpRecord:
    """One CPU-side op of a profile: what `classify_copies` reads, under FunctionEvent's names."""

    name: str
    input_shapes: list
    structured_input_strides: list
    input_dtypes: list
    cpu_parent: OpRecord | None = None


def nest_records(trace_events: list[dict]) -> list[OpRecord]:
    """Chrome-trace events -> OpRecords, each with the innermost op of its thread that encloses it as parent."""
    ops = sorted(
        (e for e in trace_events if e.get("ph") == "X" and e.get("cat", "").lower() in ("cpu_op", "user_annotation")),
        key=lambda e: (e["pid"], e["tid"], e["ts"], -e["dur"]),
    )
    out: list[OpRecord] = []
    stack: list[tuple[OpRecord, float]] = []  # (op, end) of the enclosing ops
    thread = None
    for e in ops:
        if (e["pid"], e["tid"]) != thread:
            stack, thread = [], (e["pid"], e["tid"])
        end = e["ts"] + e["dur"]
        while stack and stack[-1][1] < end - 1e-3:  # that op ended before this one did: not a parent
            stack.pop()
        args = e.get("args", {})
        rec = OpRecord(
            e["name"],
            args.get("Input Dims", []),
            args.get("Input Strides", []),
            args.get("Input type", []),
            stack[-1][0] if stack else None,
        )
        out.append(rec)
        stack.append((rec, end))
    return out


def trace_records(prof) -> list[OpRecord]:
    """The ops of a finished profile (record_shapes=True) with shapes, strides, dtypes and parents.

    Read from the exported Chrome trace, which carries input strides since
    PyTorch 2.4; FunctionEvent itself only has them since 2.12.
    """
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        records = nest_records(json.loads(path.read_text())["traceEvents"])
    if any(r.name == "aten::copy_" and r.input_shapes and not r.structured_input_strides for r in records):
        raise RuntimeError("this PyTorch's profiler records no input strides: layout copies cannot be counted")
    return records


def classify_copies(events) -> dict:
    """Count the layout-changing copies among profiled ops (OpRecords; see the module docstring)."""
    out = {
        "layout_copies": 0,
        "input_layout_copies": 0,
        "weight_layout_copies": 0,
        "dtype_casts": 0,
        "layout_copies_by_op": Counter(),
    }
    for e in events:
        if e.name != "aten::copy_" or len(e.input_shapes) < 2 or len(e.input_shapes[0]) < 4:
            continue
        (dst, src), (dst_st, src_st) = e.input_shapes[:2], e.structured_input_strides[:2]
        if dst != src:
            continue  # a broadcasting fill, not a layout change
        if dim_order(dst, dst_st) == dim_order(src, src_st):
            out["dtype_casts"] += int(e.input_dtypes[0] != e.input_dtypes[1])
            continue
        cause, op = _cause(e)
        if cause == "input":
            out["input_layout_copies"] += 1
        elif op is not None and op.name == "aten::convolution_backward" and list(dst) == list(op.input_shapes[2]):
            out["weight_layout_copies"] += 1  # the conv kernel computed the weight gradient in another layout
        else:
            out["layout_copies"] += 1
            out["layout_copies_by_op"][cause] += 1
    out["layout_copies_by_op"] = dict(out["layout_copies_by_op"].most_common())
    return out


def mixed_layouts(tensors: list[tuple[list[int], list[int]]]) -> bool:
    """True when tensors (shape, strides) of 4+ dims disagree on the order of the dims they share.

    An op whose operands disagree either converts (a copy) or reads one of
    them strided; an NDHWC step has none. Size-1 and broadcast dims carry no
    order, so an expanded gradient or a 1x1x1 kernel agrees with anything.
    """
    orders = [dim_order(shape, strides) for shape, strides in tensors if len(shape) >= 4]
    for i, a in enumerate(orders):
        for b in orders[i + 1 :]:
            common = set(a) & set(b)
            if [d for d in a if d in common] != [d for d in b if d in common]:
                return True
    return False


class MixedLayoutOps(TorchDispatchMode):
    """Records every aten op (forward and backward) whose tensors of 4+ dims disagree on their layout.

    Views are skipped (they move no data). What it sees is what the device's
    kernels produce: run on a GPU, it also catches CUDA-only layout decisions
    (such as the nearest-3D upsample kernel returning NCDHW).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        is_view = any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns)
        if not is_view:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, Tensor) and t.dim() >= 4]
            if mixed_layouts([(list(t.shape), list(t.stride())) for t in tensors]):
                self.ops[str(func.overloadpacket)] += 1
        return out


# ----------------------------------------------------------------- kernel categories (pure)

CATEGORIES = (
    "convolution/matmul",
    "normalization",
    "elementwise",
    "reduction",
    "pooling",
    "copies",
    "optimizer",
    "other",
)
# Ops a pointwise Triton kernel may be named after while it only moves data ("convolution": an input
# laid out for a convolution).
_COPY_OPS = {
    "clone",
    "to",
    "copy",
    "cat",
    "convert",
    "element",
    "type",
    "permute",
    "view",
    "select",
    "slice",
    "expand",
    "as",
    "strided",
    "unsqueeze",
    "squeeze",
    "constant",
    "pad",
    "t",
    "transpose",
    "convolution",
}
_RULES = (  # (category, substrings of the lower-cased kernel / op name); the first match wins
    ("normalization", ("batch_norm", "batchnorm", "welford", "bn_fw", "bn_bw")),
    ("optimizer", ("multi_tensor", "foreach", "sgd", "lpnorm", "optimizer", "vector_norm")),  # + grad clipping
    ("copies", ("nchwtonhwc", "nhwctonchw")),  # cuDNN's own layout conversions (named cudnn::...)
    (
        "convolution/matmul",
        (
            "conv",
            "xmma",
            "gemm",
            "nvjet",
            "cutlass",
            "cudnn",
            "implicit",
            "fprop",
            "dgrad",
            "wgrad",
            "addmm",
            "aten::mm",
            "matmul",
            "linear",
            "mkldnn",
        ),
    ),
    ("copies", ("copy", "clone", "catarray", "aten::cat", "contiguous", "transform", "transpose")),
    ("pooling", ("pool",)),
    ("reduction", ("reduce", "aten::sum", "aten::mean", "aten::var")),
    (
        "elementwise",
        (
            "elementwise",
            "threshold",
            "relu",
            "aten::add",
            "aten::mul",
            "aten::div",
            "aten::sub",
            "fill",
            "dropout",
            "aten::where",
            "aten::zero",
            "clamp",
        ),
    ),
)


def categorize(name: str) -> str:
    """The kind of work a CUDA kernel (or CPU op) does, from its name; Inductor's Triton kernels by prefix.

    A fused kernel counts once, under the first rule it matches (a BatchNorm kernel with a fused ReLU is
    normalization).
    """
    n = name.lower()
    m = re.match(r"triton_(poi|red|per|tem)_fused_(.*?)(_\d+)?$", n)
    if m and "batch_norm" not in n:
        kind, ops = m.group(1), set(m.group(2).split("_")) - {""}
        if kind == "tem":
            return "convolution/matmul"
        if kind == "poi":
            return "copies" if ops <= _COPY_OPS else "elementwise"
        return "reduction"
    return next((cat for cat, keys in _RULES if any(k in n for k in keys)), "other")


def category_table(rows: list[dict]) -> list[dict]:
    """Per category: ms per step, share of the total, calls per step (rows from `kernel_rows`)."""
    total = sum(r["ms_per_step"] for r in rows) or 1.0
    out = []
    for cat in CATEGORIES:
        mine = [r for r in rows if r["category"] == cat]
        ms = sum(r["ms_per_step"] for r in mine)
        out.append(
            {
                "category": cat,
                "ms_per_step": ms,
                "share": ms / total,
                "calls_per_step": sum(r["calls_per_step"] for r in mine),
            }
        )
    return out


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
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        if r:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 * reps / statistics.median(times)


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
    model.train()
    if spec.bn == "eval":  # frozen statistics, as tpn.train --bn-eval
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


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


def run(args: argparse.Namespace) -> dict:
    plan = resolve(args)
    set_up_device(plan, args.cudnn_benchmark_limit)
    settings = {
        "cudnn_benchmark_limit": torch.backends.cudnn.benchmark_limit if plan.device.type == "cuda" else None,
        "default_compile": DEFAULT_COMPILE,
        "compile_presets": {p: compile_options(p) for p in COMPILE_PRESETS},
    }
    if args.compile_only:
        return {"compile_only": compile_only(plan), "model": plan.name, "batch": plan.batch, **settings}
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
    return {
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
        "_profile_text": "".join(t for _, t in profiles.values()),
    }


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
        payload = run(args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.compile_only:
        print(f"results: {write_results(args.name, payload)}")
        return 1 if any(r["problem"] for r in payload["compile_only"]) else 0
    text = payload.pop("_profile_text")
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
