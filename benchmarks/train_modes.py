"""`benchmarks.train`'s mode grammar and goals (pure): what a mode name asks for, what the row must show.

A mode is a precision followed by options, joined by dashes (see `benchmarks.train`'s docstring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmarks.common import GOAL_TRAIN_SPEEDUP
from tpn.engine import (
    COMPILE_PRESETS,
    DEFAULT_COMPILE,
    StepOptions,
    step_mode,
)

BASELINE = "fp32-eager"
GOAL_SPEEDUP, GOAL_MFU, GOAL_GRAPH_SPEEDUP = GOAL_TRAIN_SPEEDUP, 0.35, 2.0  # the goals on an H100/H200
WARMUP_ITERS = 3  # TrainStep's eager steps before capture


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
