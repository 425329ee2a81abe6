"""Layout copies in a training step (pure over profiler events): `aten::copy_` calls between tensors whose
dimension order differs (NCDHW <-> NDHWC), re-nested from the profiler's Chrome trace and attributed to
the op that made them, and a dispatch mode that lists ops fed mixed layouts. Used by `benchmarks.train`.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tpn.engine import (
    INPUT_TO_NDHWC,
)


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
