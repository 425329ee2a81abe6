"""Zoo model -> ONNX, checked against PyTorch through ONNX Runtime.

`export_onnx` traces with the dynamo exporter (`torch.onnx.export(...,
dynamo=True)`) at opset 20 by default, with a dynamic batch dimension and
the clip shape of the zoo config: input "clips" (batch, 3, T, H, W) float32
normalised, output "logits" (batch, num_classes). BatchNorm folds into the
convolutions during export. The file is
self-contained below 2 GB (the exporter's default would split weights into
a `.data` file even for small models). It must pass `onnx.checker` and
agree with PyTorch FP32 under the `fp32` tolerance at several batch sizes,
or it is not written under its final name.

    python -m export.onnx tpn_r50_f8s8 --checkpoint ckpt.pth --out exports/tpn_r50_f8s8
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.errors import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, CheckFailed, ExportError, positive_int
from export.onnxfile import INPUT_NAME, OUTPUT_NAME, add_metadata, write_model
from export.outputs import default_out_dir, publish, write_json
from export.runtime import open_session
from export.source import (
    ModelSource,
    clip_shape,
    input_hw,
    load_model,
    synthetic_clips,
    torch_logits,
)
from export.tolerance import FP32, TOLERANCES, Agreement, Tolerance, compare_logits
from pipeline import staging_dir
from tpn.cli import add_checkpoint_arg

DEFAULT_OPSET = 20  # the exporter's default; TensorRT 10/11 parse opsets 9-25
MIN_OPSET = 18  # the dynamo exporter's lowest
TRACE_BATCH = 2  # tracing at batch 1 would let the exporter specialise the batch dimension to 1


@dataclass
class OnnxReport:
    model: str
    path: str
    source: ModelSource
    opset: int
    ir_version: int
    input_name: str
    output_name: str
    input_shape: list  # "batch" for the dynamic dimension
    external_data: bool
    size_bytes: int
    num_nodes: int
    op_types: dict[str, int]
    checker_passed: bool
    parity_batches: list[int]
    parity: Agreement
    passed: bool
    export_seconds: float
    versions: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.path}: opset {self.opset}, input {self.input_name}{self.input_shape}, "
            f"{self.num_nodes} nodes, {self.size_bytes / 2**20:.1f} MiB; parity vs PyTorch at batch "
            f"{self.parity_batches}: {self.parity.summary()}"
        )


def versions() -> dict[str, str]:
    import onnxruntime

    return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the exporter's noise that is not about this model (torchvision ops it skips, deprecations)."""
    names = ("torch.onnx._internal.exporter._registration", "torch.onnx")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def trace_program(model: nn.Module, shape: tuple[int, ...], *, batch: int | None, opset: int):
    """torch.onnx.export with the dynamo exporter; `batch=None` makes the batch dimension dynamic."""
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is below {MIN_OPSET}, the lowest the dynamo exporter supports")
    example = torch.zeros((batch or TRACE_BATCH, *shape))
    dynamic = None if batch else {"x": {0: torch.export.Dim("batch", min=1)}}
    with quiet_exporter():
        return torch.onnx.export(
            model,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            opset_version=opset,
            external_data=False,
            verbose=False,
        )


def ort_logits(sess, clips: np.ndarray, batch: int) -> np.ndarray:
    """ONNX Runtime logits, `batch` clips per run."""
    outs = [sess.run([OUTPUT_NAME], {INPUT_NAME: clips[i : i + batch]})[0] for i in range(0, len(clips), batch)]
    return np.concatenate(outs)


def check_parity(
    path: Path, model: nn.Module, shape: tuple[int, ...], batches: list[int], tol: Tolerance, seed: int
) -> Agreement:
    """ORT (CPU) vs PyTorch on seeded synthetic clips, one run per batch size (proves the dynamic batch)."""
    sess = open_session(path, threads=0)  # ONNX Runtime's own thread count, on the CPU
    clip = model.config.clip
    outs, refs = [], []
    for i, b in enumerate(batches):
        clips = synthetic_clips(b, shape, mean=clip.mean, std=clip.std, seed=seed + i)
        outs.append(ort_logits(sess, clips, b))
        refs.append(torch_logits(model, clips, b))
    return compare_logits(np.concatenate(outs), np.concatenate(refs), tol)


def export_onnx(
    name_or_model: str | nn.Module,
    *,
    checkpoint: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    batch: int | None = None,
    size: str | int | tuple[int, int] = "train",
    opset: int = DEFAULT_OPSET,
    parity_batches: tuple[int, ...] = (1, 3),
    tolerance: Tolerance = FP32,
    external_data: bool | None = None,
    seed: int = 0,
    check: bool = True,
    source: ModelSource | None = None,
) -> OnnxReport:
    """Export a zoo model to `<out_dir>/<name>.onnx` and check it against PyTorch.

    batch: None for a dynamic batch dimension, else a fixed batch size.
    size: "train" (training crop), "test" (the test protocol's crop, what the
        Top-1 gate feeds) or an explicit int / (H, W).
    check: raise CheckFailed when ONNX Runtime disagrees with PyTorch beyond
        `tolerance`; the rejected file is then kept in `<out_dir>/rejected/`.
    source: where a model passed in already loaded (by `load_model`) got its
        weights, for the report and the file's metadata.
    """
    model, loaded = load_model(name_or_model, checkpoint)
    source = source or loaded
    cfg = model.config
    shape = clip_shape(cfg, input_hw(cfg, size))
    if cfg.backbone == "tsm" and shape[1] != cfg.clip.frames:
        raise ExportError(f"{cfg.name} needs exactly {cfg.clip.frames} frames (TSM segments)")
    if batch is not None:
        parity_batches = (batch,)
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(cfg.name)
    out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    proto = trace_program(model, shape, batch=batch, opset=opset).model_proto
    add_metadata(
        proto,
        {
            "model": cfg.name,
            "num_classes": source.num_classes,
            "input_hw": f"{shape[2]}x{shape[3]}",
            "checkpoint_sha256": source.checkpoint_sha256 or "",
            "weights": source.weights,
            "precision": "fp32",
        },
    )
    with staging_dir(out_dir) as stage:
        files = write_model(proto, stage / f"{cfg.name}.onnx", external_data=external_data)
        onnx.checker.check_model(str(files[-1]))  # by path: works above 2 GB too
        parity = check_parity(files[-1], model, shape, list(parity_batches), tolerance, seed)
        passed = parity.passed
        dest = publish(files, out_dir if passed or not check else out_dir / "rejected")
    report = OnnxReport(
        model=cfg.name,
        path=str(dest),
        source=source,
        opset=opset,
        ir_version=proto.ir_version,
        input_name=INPUT_NAME,
        output_name=OUTPUT_NAME,
        input_shape=[batch or "batch", *shape],
        external_data=len(files) > 1,
        size_bytes=_size(dest),
        num_nodes=len(proto.graph.node),
        op_types=_op_counts(proto),
        checker_passed=True,
        parity_batches=list(parity_batches),
        parity=parity,
        passed=passed,
        export_seconds=round(time.perf_counter() - t0, 2),
        versions=versions(),
    )
    if check and not passed:
        raise CheckFailed(f"ONNX Runtime disagrees with PyTorch: {parity.summary()}; kept as {dest}", report)
    return report


def _size(path: Path) -> int:
    data = Path(str(path) + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


# ----------------------------------------------------------------- CLI


SIZE_WORDS = ("train", "test")


def parse_input_size(text: str, words: tuple[str, ...] = SIZE_WORDS) -> str | int | tuple[int, int]:
    """An exported input's spatial size: one of `words`, 'N' (N x N) or 'HxW', height first.

    Height first as in the clips tensor (N, 3, T, H, W); frame sizes given
    to ffmpeg when sharding are width x height instead.
    """
    if text in words:
        return text
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) in (1, 2) and min(parts) > 0:
        return parts[0] if len(parts) == 1 else (parts[0], parts[1])
    raise argparse.ArgumentTypeError(
        f"size must be {', '.join(words)}, N or HxW (height x width, e.g. 256x340; sizes >= 1), got {text!r}"
    )


def add_model_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared with `export.trt`."""
    p.add_argument("name", help="zoo model name (see tpn.list_models(); tiny entries: '*tiny*')")
    add_checkpoint_arg(p, what="weights to export")
    p.add_argument("--out", help="output folder (default: exports/<name>/)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset >= {MIN_OPSET} (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic check clips (default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.onnx",
        description=(
            "Export a zoo model to ONNX (dynamo exporter, dynamic batch, single file below 2 GB), "
            "run onnx.checker, and check ONNX Runtime against PyTorch FP32 on synthetic clips. "
            "Writes <out>/<name>.onnx and <out>/report.json."
        ),
        epilog=EXIT_CODES_HELP,
    )
    add_model_args(p)
    p.add_argument(
        "--size",
        type=parse_input_size,
        default="train",
        help="input size, height x width: 'train' (training crop, default), 'test' (test-protocol crop, as "
        "the Top-1 gate needs), N (N x N) or HxW (e.g. 256x340: height 256, width 340)",
    )
    p.add_argument("--batch", type=positive_int, help="fixed batch size (default: dynamic batch dimension)")
    p.add_argument(
        "--parity-batches",
        type=positive_int,
        nargs="+",
        default=[1, 3],
        help="batch sizes of the ONNX Runtime vs PyTorch check (default: 1 3)",
    )
    p.add_argument(
        "--tolerance",
        choices=sorted(TOLERANCES),
        default="fp32",
        help="named tolerance of the parity check (default %(default)s)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out_dir(args.name)
    head: dict = {"settings": {k: v for k, v in vars(args).items()} | {"out": str(out)}}
    try:
        model, source = load_model(args.name, args.checkpoint, other_architecture=args.allow_other_architecture)
        head.update(weights=source.weights, warning=source.random_weights_warning())
        if head["warning"]:
            print(head["warning"], flush=True)  # the first line, before the export's minutes
        report = export_onnx(
            model,
            source=source,
            out_dir=out,
            batch=args.batch,
            size=args.size,
            opset=args.opset,
            parity_batches=tuple(args.parity_batches),
            tolerance=TOLERANCES[args.tolerance],
            seed=args.seed,
        )
    except CheckFailed as e:
        write_json(out / "report.json", {**head, "onnx": e.report, "passed": False})
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    write_json(out / "report.json", {**head, "onnx": report, "passed": True})
    print(report.summary())
    print(f"report: {out / 'report.json'}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
