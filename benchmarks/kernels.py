"""Kernel categories (pure): a CUDA kernel's or CPU op's name -> convolution/matmul, normalization,
elementwise, reduction, pooling, copies, optimizer; for `benchmarks.train --profile`.
"""

from __future__ import annotations

import re


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
