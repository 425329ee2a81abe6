"""FP32 ONNX -> mixed-precision FP16 ONNX: convolutions in FP16, the sensitive parts in FP32.

What stays FP32, and why (each kept node is listed in the report with its reason):
  - numerically sensitive op types: softmax, sums and means (ReduceMean is
    the global pool of every zoo model), exp/log/pow/sqrt, normalisations;
  - the classifier: everything after the last global reduction (the Gemm);
  - nodes whose weights do not survive FP16: any |w| > 65504 (overflow), or
    rounding that changes the tensor by more than `init_rel_err` relative
    L2 error (mostly subnormal or flushed values; e.g. a BN folded into a
    conv with a tiny running variance). A few tiny weights in a conv are
    harmless, so single subnormals are counted, not acted on;
  - the producer and the consumers of every activation that, on the
    calibration clips, exceeds `data_max` (as ModelOpt AutoCast's data_max:
    later sums of such values overflow) or loses more than `act_rel_err`
    to FP16 rounding (underflow), so that tensor is never cast to FP16.
Inputs and outputs stay FP32, so callers feed the same tensors as before.

The rewrite itself is ONNX Runtime's maintained converter
(`onnxruntime.transformers.float16`, shipped with onnxruntime). Two small
passes tidy its output: casts that would round an FP32 value to FP16 and
straight back between two FP32 nodes (e.g. pooled features -> classifier,
logits -> output) are removed, since they throw away the precision the
blocking asked for; and no-op casts go.

Calibration clips come from validation shards when given, else from seeded
synthetic clips. The result is checked against the FP32 model in ONNX
Runtime under the `fp16` tolerance, or refused.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from export.errors import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, CheckFailed, ExportError, positive_int
from export.onnx import ort_logits
from export.onnxfile import INPUT_NAME, add_metadata, onnx_clip_shape, read_metadata, write_model
from export.outputs import publish, write_json
from export.runtime import open_session
from export.shards import view_batches
from export.source import synthetic_clips
from export.tolerance import FP16, Agreement, Tolerance, compare_logits
from pipeline import staging_dir

FP16_MAX = 65504.0
FP16_TINY = 6.1035e-05  # smallest normal FP16; below it values are subnormal (fewer bits), then zero
SENSITIVE_OPS = frozenset(
    {
        "Softmax",
        "LogSoftmax",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL1",
        "ReduceL2",
        "ReduceLogSum",
        "ReduceLogSumExp",
        "ReduceProd",
        "GlobalAveragePool",
        "GlobalLpPool",
        "Exp",
        "Log",
        "Pow",
        "Sqrt",
        "Reciprocal",
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
    }
)
GLOBAL_REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "GlobalAveragePool", "GlobalMaxPool"})
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16)


@dataclass
class KeptNode:
    name: str
    op_type: str
    reason: str


@dataclass
class TensorStats:
    """How a tensor fares in FP16: its range and the relative L2 error of rounding it."""

    max_abs: float
    rel_err: float
    subnormal: int  # nonzero values below FP16's normal range (fewer bits, or flushed to zero)
    size: int


@dataclass
class Fp16Report:
    from_onnx: str  # the FP32 ONNX file it was made from
    path: str
    calibration: dict
    data_max: float
    init_rel_err: float
    act_rel_err: float
    nodes: int
    float_nodes: int
    fp16_nodes: int
    kept_fp32: list[KeptNode]
    casts: int
    agreement: Agreement
    passed: bool
    size_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for k in self.kept_fp32:
            key = k.reason.split(":")[0]
            reasons[key] = reasons.get(key, 0) + 1
        kept = ", ".join(f"{n} {r}" for r, n in reasons.items()) or "none"
        return (
            f"{self.path}: {self.fp16_nodes}/{self.float_nodes} float nodes in FP16; kept FP32: {kept}; "
            f"vs FP32 ONNX: {self.agreement.summary()}"
        )


# ----------------------------------------------------------------- analysis (pure functions)


def fp16_stats(*values: np.ndarray) -> TensorStats:
    """What rounding to FP16 does to a tensor (or to the values of several, e.g. one activation over clips)."""
    acc = _Rounding()
    for x in values:
        acc.add(x)
    return acc.stats()


class _Rounding:
    """Running sums behind `fp16_stats`: max |x|, sum x^2, sum (fp16(x) - x)^2, subnormal count, size."""

    def __init__(self):
        self.max_abs, self.sq, self.sq_err, self.subnormal, self.size = 0.0, 0.0, 0.0, 0, 0

    def add(self, value: np.ndarray) -> None:
        x = np.asarray(value, np.float32)
        with np.errstate(over="ignore"):
            r = x.astype(np.float16).astype(np.float32)
        ax = np.abs(x)
        self.max_abs = max(self.max_abs, float(ax.max()) if ax.size else 0.0)
        self.sq += float(np.square(x, dtype=np.float64).sum())
        self.sq_err += float(np.square(r - x, dtype=np.float64).sum()) if np.isfinite(r).all() else np.inf
        self.subnormal += int(((ax > 0) & (ax < FP16_TINY)).sum())
        self.size += int(ax.size)

    def stats(self) -> TensorStats:
        rel_err = float(np.sqrt(self.sq_err / self.sq)) if self.sq > 0 else 0.0
        return TensorStats(max_abs=self.max_abs, rel_err=rel_err, subnormal=self.subnormal, size=self.size)


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def descendants(graph: onnx.GraphProto, start: onnx.NodeProto) -> set[str]:
    """Names of the nodes fed, directly or not, by `start`."""
    users, seen, todo = consumers(graph), set(), list(start.output)
    while todo:
        for node in users.get(todo.pop(), []):
            if node.name not in seen:
                seen.add(node.name)
                todo.extend(node.output)
    return seen


def head_nodes(graph: onnx.GraphProto) -> set[str]:
    """The classifier: nodes after the last global reduction (those with no reduction downstream)."""
    reductions = [n for n in graph.node if n.op_type in GLOBAL_REDUCTIONS]
    after = {n.name: descendants(graph, n) for n in reductions}
    names = {n.name for n in reductions}
    head: set[str] = set()
    for n in reductions:
        if not after[n.name] & names:
            head |= after[n.name]
    return head


def weight_verdicts(graph: onnx.GraphProto, init_rel_err: float) -> dict[str, str]:
    """{node name: reason} for nodes whose float initializers overflow or underflow in FP16."""
    inits = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT}
    stats = {name: fp16_stats(numpy_helper.to_array(t)) for name, t in inits.items()}
    out: dict[str, str] = {}
    for node in graph.node:
        for name in node.input:
            s = stats.get(name)
            if s is None:
                continue
            if s.max_abs > FP16_MAX:
                out[node.name] = f"weights overflow FP16: max |{name}| = {s.max_abs:.4g} > {FP16_MAX:g}"
            elif s.rel_err > init_rel_err:
                out[node.name] = (
                    f"weights underflow FP16: {name} loses {s.rel_err:.2g} (relative L2) to rounding, "
                    f"{s.subnormal}/{s.size} values below FP16's normal range"
                )
    return out


def activation_verdicts(
    graph: onnx.GraphProto, stats: dict[str, TensorStats], data_max: float, act_rel_err: float
) -> dict[str, str]:
    """{node name: reason} for the producer and the consumers of every activation that leaves FP16's range.

    Both sides stay FP32 so that the tensor itself is never cast to FP16:
    keeping only its producer would still round it on the way out.
    """
    flagged: dict[str, str] = {}
    for name, s in stats.items():
        if s.max_abs > data_max:
            flagged[name] = f"activations too large: max |{name}| = {s.max_abs:.4g} > data_max {data_max:g}"
        elif s.rel_err > act_rel_err:
            flagged[name] = f"activations underflow FP16: {name} loses {s.rel_err:.2g} (relative L2) to rounding"
    out: dict[str, str] = {}
    for node in graph.node:
        for name in (*node.output, *node.input):
            if name in flagged:
                out[node.name] = flagged[name]
                break
    return out


# ----------------------------------------------------------------- calibration


def float_outputs(model: onnx.ModelProto) -> list[str]:
    """Names of every FP32 tensor a node produces (types from shape inference)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.graph.value_info, *inferred.graph.output)}
    return [o for n in model.graph.node for o in n.output if types.get(o) == TensorProto.FLOAT]


def activation_stats(
    model: onnx.ModelProto, clips: np.ndarray, batch: int = 1
) -> tuple[dict[str, TensorStats], np.ndarray]:
    """Run the FP32 model on `clips` with every intermediate tensor exposed; merge stats over clips.

    Also returns the model's (N, K) logits from the same run, the FP32
    reference the converted model is checked against.
    """
    names = float_outputs(model)
    probe = copy.deepcopy(model)
    logits_name = probe.graph.output[0].name
    known = {o.name for o in probe.graph.output}
    for name in names:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    fetch = names if logits_name in names else [*names, logits_name]
    sess = open_session(probe.SerializeToString(), threads=0)
    acc = {name: _Rounding() for name in names}
    logits = []
    for i in range(0, len(clips), batch):
        outs = dict(zip(fetch, sess.run(fetch, {INPUT_NAME: clips[i : i + batch]})))
        logits.append(outs[logits_name])
        for name in names:
            acc[name].add(outs[name])
    return {name: a.stats() for name, a in acc.items()}, np.concatenate(logits)


def calibration_clips(
    calibration: None | np.ndarray | str | os.PathLike,
    model: onnx.ModelProto,
    *,
    num_clips: int,
    seed: int,
    split: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Clips to calibrate on, and a description of where they came from."""
    shape = onnx_clip_shape(model)
    clip = _clip_spec(model)
    if calibration is None:
        clips = synthetic_clips(num_clips, shape, mean=clip.mean, std=clip.std, seed=seed)
        return clips, {"kind": "synthetic", "clips": num_clips, "seed": seed}
    if isinstance(calibration, np.ndarray):
        if calibration.ndim != 5 or tuple(calibration.shape[1:]) != shape:
            raise ExportError(f"calibration clips must be (N, {', '.join(map(str, shape))}), got {calibration.shape}")
        return np.ascontiguousarray(calibration, np.float32), {"kind": "array", "clips": len(calibration)}
    clips = shard_clips(calibration, clip, shape, num_clips, split=split)
    return clips, {"kind": "shards", "path": str(calibration), "split": split, "clips": len(clips)}


def _clip_spec(model: onnx.ModelProto):
    import tpn

    name = read_metadata(model).get("model")
    if name is None:
        raise ExportError("the ONNX file has no 'tpn.model' metadata: export it with export.onnx")
    return tpn.get_config(name).clip


def center_crop(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Centre crop of (..., H, W) to (..., h, w); the test views may be larger than the export size."""
    H, W = x.shape[-2:]
    if H < h or W < w:
        raise ExportError(f"clips of {H}x{W} are smaller than the model input {h}x{w}")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top : top + h, left : left + w]


def shard_clips(
    shards: str | os.PathLike, clip, shape: tuple[int, ...], num_clips: int, split: str | None = None
) -> np.ndarray:
    """One test view from each of the first `num_clips` videos of the shards, cropped to the model input.

    A view per video (the middle one: a central crop of a central clip)
    spreads calibration over different videos rather than one video's views.
    """
    batches = view_batches(shards, clip, batch_size=min(num_clips, 8), split=split, what="calibration shards")
    out: list[np.ndarray] = []
    with contextlib.closing(batches):
        for clips, _ in batches:  # (N, V, 3, T, H, W)
            middle = clips[:, clips.shape[1] // 2].cpu().numpy()
            out.extend(center_crop(middle, shape[2], shape[3]))
            if len(out) >= num_clips:
                break
    if not out:
        raise ExportError(f"no clips in {shards}")
    return np.ascontiguousarray(np.stack(out[:num_clips]), np.float32)


# ----------------------------------------------------------------- conversion


def convert(model: onnx.ModelProto, block_nodes: Iterable[str]) -> onnx.ModelProto:
    """ONNX Runtime's converter with our block lists, FP32 I/O, then the cast clean-up."""
    from onnxruntime.transformers import float16

    ops = set(float16.DEFAULT_OP_BLOCK_LIST) | SENSITIVE_OPS
    out = float16.convert_float_to_float16(
        copy.deepcopy(model),
        keep_io_types=True,
        op_block_list=sorted(ops),
        node_block_list=sorted(block_nodes),
        max_finite_val=FP16_MAX,
    )
    tidy_casts(out)
    return out


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")


def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor (inputs, initializers, inferred intermediates, outputs)."""
    bare = copy.deepcopy(model)
    del bare.graph.value_info[:]  # the converter leaves stale entries; infer afresh
    g = onnx.shape_inference.infer_shapes(bare).graph
    types = {t.name: t.data_type for t in g.initializer}
    for v in (*g.input, *g.value_info, *g.output):
        types[v.name] = v.type.tensor_type.elem_type
    return types


def tidy_casts(model: onnx.ModelProto) -> None:
    """Drop FP32 -> FP16 -> FP32 round trips and no-op casts; keep graph output names; sort topologically."""
    graph = model.graph
    _toposort(graph)
    types = tensor_types(model)
    producer = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type != "Cast":
            continue
        src = node.input[0]
        first = producer.get(src)
        if (
            _cast_to(node) == TensorProto.FLOAT
            and first is not None
            and first.op_type == "Cast"
            and _cast_to(first) == TensorProto.FLOAT16
            and types.get(first.input[0]) == TensorProto.FLOAT
        ):
            src = first.input[0]
        if types.get(src) == _cast_to(node):
            node.op_type, node.input[0] = "Identity", src
            del node.attribute[:]
    _drop_identities(graph)
    _drop_dead(graph)
    _toposort(graph)


def _drop_identities(graph: onnx.GraphProto) -> None:
    """Bypass Identity nodes, except those that name a graph output."""
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}
    keep = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            rename[node.output[0]] = node.input[0]
        else:
            keep.append(node)

    def resolve(name: str) -> str:
        while name in rename:
            name = rename[name]
        return name

    for node in keep:
        for i, name in enumerate(node.input):
            node.input[i] = resolve(name)
    del graph.node[:]
    graph.node.extend(keep)


def _drop_dead(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nobody reads (casts orphaned by the round-trip removal)."""
    while True:
        used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
        live = [n for n in graph.node if any(o in used for o in n.output)]
        if len(live) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(live)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    names = {o for n in graph.node for o in n.output}
    vis = [v for v in graph.value_info if v.name in names]
    del graph.value_info[:]
    graph.value_info.extend(vis)


def _toposort(graph: onnx.GraphProto) -> None:
    """ONNX requires nodes in topological order; the converter appends its casts at the end."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        progress = [n for n in pending if all(i in ready for i in n.input)]
        if not progress:
            raise ExportError(f"the converted graph has a cycle or a missing input near {pending[0].name}")
        for n in progress:
            ready.update(n.output)
        ordered.extend(progress)
        pending = [n for n in pending if n not in progress]
    del graph.node[:]
    graph.node.extend(ordered)


def node_precisions(model: onnx.ModelProto) -> dict[str, int]:
    """{node name: element type it computes in} for nodes with a float input or output."""
    types = tensor_types(model)
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in ("Cast", "Identity"):
            continue
        for name in (*node.input, *node.output):
            if types.get(name) in FLOAT_TYPES:
                out[node.name] = types[name]
                break
    return out


def kept_fp32(original: onnx.ModelProto, converted: onnx.ModelProto, reasons: dict[str, str]) -> list[KeptNode]:
    """Float nodes of the original model that compute in FP32 after conversion, with the reason."""
    precisions = node_precisions(converted)
    kept = []
    for node in original.graph.node:
        if precisions.get(node.name) == TensorProto.FLOAT:
            reason = reasons.get(node.name, "the converter keeps this op type in FP32")
            kept.append(KeptNode(node.name, node.op_type, reason))
    return kept


def block_reasons(
    model: onnx.ModelProto, acts: dict[str, TensorStats], *, data_max: float, init_rel_err: float, act_rel_err: float
) -> dict[str, str]:
    """Why each node must stay FP32; op-type reasons first, then head, weights and activations."""
    g = model.graph
    reasons: dict[str, str] = {}
    for name, why in activation_verdicts(g, acts, data_max, act_rel_err).items():
        reasons[name] = why
    for name, why in weight_verdicts(g, init_rel_err).items():
        reasons[name] = why
    for name in head_nodes(g):
        reasons[name] = "classifier: after the last global pooling"
    for node in g.node:
        if node.op_type in SENSITIVE_OPS:
            reasons[node.name] = f"numerically sensitive op: {node.op_type}"
    return reasons


def ort_run(model: onnx.ModelProto | str | os.PathLike, clips: np.ndarray, batch: int = 4) -> np.ndarray:
    """Logits of an ONNX model (in memory or a file) in ONNX Runtime on the CPU, `batch` clips per run."""
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
    return ort_logits(open_session(src, threads=0), clips, batch)


def to_fp16(
    onnx_path: str | os.PathLike,
    *,
    calibration: None | np.ndarray | str | os.PathLike = None,
    out: str | os.PathLike | None = None,
    num_clips: int = 4,
    data_max: float = 512.0,
    init_rel_err: float = 1e-3,
    act_rel_err: float = 1e-3,
    tolerance: Tolerance = FP16,
    seed: int = 0,
    check: bool = True,
    split: str | None = None,
) -> Fp16Report:
    """Write a mixed-precision copy of an FP32 ONNX file (default `<name>.fp16.onnx` beside it).

    calibration: None (seeded synthetic clips), an (N, 3, T, H, W) array of
        normalised clips, or a folder of validation shards (`split` picks
        `<split>-*.tar` in it).
    check: raise CheckFailed when the FP16 model disagrees with the FP32 one
        beyond `tolerance` (the file then goes to `rejected/` beside `out`).
    """
    t0 = time.perf_counter()
    src = Path(onnx_path)
    if not src.is_file():
        raise ExportError(f"{src} does not exist: export the model first (python -m export.onnx NAME)")
    model = onnx.load(str(src))
    if any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer):
        raise ExportError(f"{src} already holds FP16 weights: convert the FP32 export instead")
    out = Path(out) if out is not None else src.with_name(src.name.removesuffix(".onnx") + ".fp16.onnx")
    clips, calib = calibration_clips(calibration, model, num_clips=num_clips, seed=seed, split=split)
    acts, fp32_logits = activation_stats(model, clips)
    reasons = block_reasons(model, acts, data_max=data_max, init_rel_err=init_rel_err, act_rel_err=act_rel_err)
    block = [n for n, why in reasons.items() if not why.startswith("numerically sensitive op")]
    converted = convert(model, block)
    _set_precision_metadata(converted)
    agreement = compare_logits(ort_run(converted, clips), fp32_logits, tolerance)
    with staging_dir(out.parent) as stage:
        files = write_model(converted, stage / out.name)
        onnx.checker.check_model(str(files[-1]))
        dest = publish(files, out.parent if agreement.passed or not check else out.parent / "rejected")
    precisions = node_precisions(converted)
    report = Fp16Report(
        from_onnx=str(src),
        path=str(dest),
        calibration=calib,
        data_max=data_max,
        init_rel_err=init_rel_err,
        act_rel_err=act_rel_err,
        nodes=len(converted.graph.node),
        float_nodes=len(precisions),
        fp16_nodes=sum(t == TensorProto.FLOAT16 for t in precisions.values()),
        kept_fp32=kept_fp32(model, converted, reasons),
        casts=sum(n.op_type == "Cast" for n in converted.graph.node),
        agreement=agreement,
        passed=agreement.passed,
        size_bytes=dest.stat().st_size,
        seconds=round(time.perf_counter() - t0, 2),
    )
    if check and not agreement.passed:
        msg = f"the FP16 model disagrees with the FP32 one: {agreement.summary()}; kept as {dest}"
        raise CheckFailed(msg, report)
    return report


def _set_precision_metadata(model: onnx.ModelProto) -> None:
    kept = [p for p in model.metadata_props if p.key != "tpn.precision"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    add_metadata(model, {"precision": "fp16-mixed"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.fp16",
        description=(
            "Convert an FP32 ONNX export to mixed-precision FP16 (convolutions in FP16; the numerically "
            "sensitive ops, the classifier and the layers whose weights or activations leave FP16's range stay "
            "FP32) and check it against the FP32 model in ONNX Runtime under the fp16 tolerance. Writes "
            "<name>.fp16.onnx beside the input (or --out) and its report as <name>.fp16.json; a file that fails "
            "the check goes to rejected/ beside it and the exit status is 1."
        ),
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("onnx", type=Path, help="the FP32 ONNX file (python -m export.onnx NAME writes one)")
    p.add_argument("--out", type=Path, help="the FP16 ONNX file to write (default: <name>.fp16.onnx beside it)")
    p.add_argument(
        "--calib-shards",
        help="validation shard folder (or URL) whose test views calibrate the ranges (default: seeded synthetic clips)",
    )
    p.add_argument("--split", default="val", help="split of --calib-shards to read (default %(default)s)")
    p.add_argument("--calib-clips", type=positive_int, default=4, help="calibration clips (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic clips (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = to_fp16(
            args.onnx,
            calibration=args.calib_shards,
            out=args.out,
            num_clips=args.calib_clips,
            seed=args.seed,
            split=args.split if args.calib_shards else None,
        )
    except CheckFailed as e:
        write_json(_report_path(Path(e.report.path)), {"fp16": e.report, "passed": False})
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    write_json(_report_path(Path(report.path)), {"fp16": report, "passed": True})
    print(report.summary())
    print(f"report: {_report_path(Path(report.path))}")
    return EXIT_OK


def _report_path(fp16_onnx: Path) -> Path:
    return fp16_onnx.with_name(fp16_onnx.name.removesuffix(".onnx") + ".json")


if __name__ == "__main__":
    sys.exit(main())
