"""The whole export and its command line: ONNX -> FP16 ONNX -> TensorRT engine -> the gate of every file made.

    python -m export.trt tpn_r50_f8s8 --checkpoint ckpt.pth --val-shards shards/k400

`export_engine` runs the steps (`export.onnx`, `export.fp16`, `export.engine`)
and gates every file it made in one pass over the validation shards
(`export.validate.gate`: the data is decoded and PyTorch runs once); each
passing file gets its own `.validated.json`. The command (`python -m
export.trt`, the name it has always had, or `python -m export.deploy`)
writes report.json. Without TensorRT or a CUDA GPU it still writes and
gates the ONNX and FP16 ONNX files (marking each whose gate passes on
--val-shards), lists each file with its gate result, then exits with
status 2 and says what is missing (1 if a gate did not pass); it never
claims an engine it did not build. Without --checkpoint the first line of
the output, and report.json, say that the weights are random.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from export.engine import TrtReport, build_engine, missing_requirements
from export.errors import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_MISSING,
    EXIT_OK,
    CheckFailed,
    ExportError,
    MissingDependencyError,
    positive_int,
)
from export.fp16 import Fp16Report, to_fp16
from export.int8 import (
    DEFAULT_CLIPS,
    DEFAULT_QUANTIZER,
    QUANTIZERS,
    Int8Report,
    calibrate,
    calibration_source,
    ready_quantizer,
    to_int8,
)
from export.onnx import SIZE_WORDS, OnnxReport, add_model_args, export_onnx, parse_input_size
from export.outputs import default_out_dir, write_json
from export.runtime import TRT_INSTALL
from export.shards import validation_split
from export.source import ModelSource, load_model
from export.validate import GateReport, Thresholds, add_gate_args, gate, thresholds_from


def resolve_size(size: str | int | tuple[int, int], val_shards: str | None) -> str | int | tuple[int, int]:
    """'auto': the test-protocol crop when the gate runs on shards (it feeds test views), else the training crop."""
    if size == "auto":
        return "test" if val_shards else "train"
    return size


@dataclass
class ArtifactResult:
    """One file `export_engine` made (or could not make), and its gate."""

    kind: str  # "onnx", "fp16" or "engine"
    path: str | None
    built: bool
    gate: GateReport | None = None
    missing: str | None = None  # why it was not built

    def line(self) -> str:
        if not self.built:
            return f"  {self.kind:<6} not built: {self.missing}"
        if self.gate is None:
            return f"  {self.kind:<6} {self.path}: not gated"
        g = self.gate
        what = (
            "no accuracy validated (no --val-shards)"
            if g.mode == "synthetic"
            else f"Top-1 {g.artifact_top1:.2f}% vs PyTorch {g.torch_top1:.2f}%, agreement "
            f"{100 * g.prediction_agreement:.1f}% on {g.videos} videos"
        )
        marked = f"; marked: {Path(g.marker).name}" if g.marker else ""
        return f"  {self.kind:<6} {self.path}: gate {g.verdict.upper()} ({g.backend}, {g.precision}; {what}){marked}"


@dataclass
class EngineExport:
    """Every step of `export_engine`; `status` is the CLI's exit code."""

    onnx: OnnxReport
    fp16: Fp16Report
    engine: TrtReport | dict
    artifacts: list[ArtifactResult]
    status: int
    warning: str | None = None  # random weights
    int8: Int8Report | dict | None = None  # a dict when no INT8 file could be made: why


def export_status(artifacts: list[ArtifactResult]) -> int:
    """1 when a gate did not pass, else 2 when the engine is missing, else 0 (pure)."""
    if any(a.gate is not None and not a.gate.passed for a in artifacts):
        return EXIT_FAILED
    if any(not a.built for a in artifacts):
        return EXIT_MISSING
    return EXIT_OK


def export_engine(
    name_or_model: str | torch.nn.Module,
    *,
    checkpoint: str | Path | None = None,
    source: ModelSource | None = None,
    out_dir: str | Path | None = None,
    size: str | int | tuple[int, int] = "auto",
    opset: int = 20,
    seed: int = 0,
    calib_clips: int | None = None,
    max_batch: int = 32,
    opt_batch: int = 8,
    typing: str = "auto",
    workspace_gib: float = 4.0,
    val_shards: str | Path | None = None,
    split: str | None = "val",
    thresholds=None,
    zoo_checkpoint: bool | None = None,
    batch_size: int = 4,
    max_videos: int | None = None,
    int8: bool = False,
    calib_shards: str | Path | None = None,
    calib_split: str | None = None,
    quantizer: str = DEFAULT_QUANTIZER,
    log=print,
) -> EngineExport:
    """ONNX -> FP16 ONNX -> engine (and with `int8`, the INT8 files), then one gate over every file made
    (the Top-1 gate with `val_shards`).

    `name_or_model` may be a zoo model already holding its weights, with
    `source` saying where they came from (as `export_onnx` takes it).
    Without TensorRT or a GPU the ONNX files are still gated (ONNX Runtime,
    or OpenVINO where it is installed) and, when the gate passes on
    `val_shards`, marked validated. `calib_clips`: the FP16 range
    calibration's clips (default 4) and the INT8 calibration's (default
    `export.int8.DEFAULT_CLIPS`); INT8 calibrates on `calib_shards` at
    `calib_split` (default: the train split of `val_shards`).
    """
    # One model for every step: without a checkpoint its random weights must be the same throughout.
    model, loaded = load_model(name_or_model, checkpoint)
    source = source or loaded
    warning = source.random_weights_warning()
    if warning:
        log(warning)
    split = validation_split(val_shards, split) if val_shards else split
    calib = calibration_source(val_shards, split, calib_shards, calib_split) if int8 else None  # refused early
    missing = missing_requirements(short=True)  # said in full once, at the end
    if missing:
        log(f"note: no engine can be built here ({missing}); the ONNX and FP16 ONNX files are still made and gated")
    out_dir = Path(out_dir) if out_dir else default_out_dir(model.config.name)
    size = resolve_size(size, val_shards)
    onnx_r = export_onnx(model, source=source, out_dir=out_dir, size=size, opset=opset, seed=seed)
    log(onnx_r.summary())
    fp16_r = to_fp16(onnx_r.path, calibration=val_shards, split=split, num_clips=calib_clips or 4, seed=seed)
    log(fp16_r.summary())
    arts = [ArtifactResult("onnx", onnx_r.path, True), ArtifactResult("fp16", fp16_r.path, True)]
    int8_r = None
    if calib is not None:
        int8_r, int8_arts = _int8(onnx_r.path, calib, calib_clips or DEFAULT_CLIPS, quantizer, log)
        arts += int8_arts
    try:
        engine = build_engine(
            fp16_r.path, max_batch=max_batch, opt_batch=opt_batch, typing=typing, workspace_gib=workspace_gib
        )
        log(engine.summary())
        arts.append(ArtifactResult("engine", engine.path, True))
    except MissingDependencyError as e:
        engine = {"built": False, "missing": str(e)}
        arts.append(ArtifactResult("engine", None, False, missing=missing_requirements(short=True) or str(e)))
    built = [a for a in arts if a.built]
    reports = gate(
        [a.path for a in built],
        model_name=model,
        source=source,
        val_shards=val_shards,
        split=split,
        thresholds=thresholds or Thresholds(),
        zoo_checkpoint=zoo_checkpoint,
        batch_size=batch_size,
        max_videos=max_videos,
    )
    for a, r in zip(built, reports):
        a.gate = r
        log(r.summary())
    return EngineExport(onnx_r, fp16_r, engine, arts, export_status(arts), warning, int8_r)


def _int8(
    onnx_path: str, calib: tuple, clips: int, quantizer: str, log
) -> tuple[Int8Report | dict, list[ArtifactResult]]:
    """The INT8 file of the FP32 ONNX (export.int8). One that missed its held-out accuracy is still gated (and
    is marked only if the gate passes it); a missing quantizer is reported like a missing TensorRT."""
    location, split, optimistic = calib
    try:
        ready_quantizer(quantizer)  # said before any calibration clip is decoded
    except MissingDependencyError as e:
        log(f"note: no INT8 file made: {e}")
        return {"built": False, "missing": str(e)}, [ArtifactResult("int8", None, False, missing=str(e))]
    calibration = calibrate(onnx_path, location, split, clips, optimistic)
    for note in calibration.notes:
        log(f"WARNING: {note}")
    if optimistic:
        log(f"WARNING: INT8 calibrated on {location} split {split!r}, the videos the gate judges: it is optimistic")
    try:
        report = to_int8(onnx_path, calibration, quantizer=quantizer, log=log)
    except CheckFailed as e:
        report = e.report
        log(f"WARNING: {e}")
    log(report.summary())
    return report, [ArtifactResult("int8", report.path, True)]


ENGINE_ARGS = (
    "size",
    "opset",
    "seed",
    "calib_clips",
    "max_batch",
    "opt_batch",
    "typing",
    "workspace_gib",
    "val_shards",
    "split",
    "zoo_checkpoint",
    "batch_size",
    "max_videos",
    "int8",
    "calib_shards",
    "calib_split",
    "quantizer",
)


def summary_lines(r: EngineExport) -> list[str]:
    """The closing summary: every artifact with its gate result."""
    lines = ["artifacts:"] + [a.line() for a in r.artifacts]
    if r.warning:
        lines.append("random weights: the gates above say nothing about accuracy")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.trt",
        description=(
            "Export a zoo model to a TensorRT FP16 engine and gate it: ONNX (checked against PyTorch), "
            "mixed-precision FP16 ONNX (checked against the FP32 ONNX), engine (TensorRT 10 or 11), then "
            "the Top-1 gate of every file made (with --val-shards) or a synthetic-clip logit check. Writes "
            "<out>/<name>.onnx, <name>.fp16.onnx, <name>.fp16.engine, timing.cache and report.json, and "
            "<file>.validated.json for each file whose gate passes on shards. Without TensorRT the ONNX files "
            "are still gated and the exit status is 2."
        ),
        epilog=EXIT_CODES_HELP + f". TensorRT: {TRT_INSTALL}.",
    )
    add_model_args(p)
    p.add_argument(
        "--size",
        type=parse_input_size_or_auto,
        default="auto",
        help="input size, height x width: auto (test crop with --val-shards, else training crop), train, "
        "test, N (N x N) or HxW (e.g. 256x340: height 256, width 340)",
    )
    p.add_argument(
        "--max-batch", type=positive_int, default=32, help="largest batch of the engine's profile (default %(default)s)"
    )
    p.add_argument(
        "--opt-batch", type=positive_int, default=8, help="batch the engine is tuned for (default %(default)s)"
    )
    p.add_argument(
        "--typing",
        choices=["auto", "strong", "weak"],
        default="auto",
        help="auto/strong: precision from the FP16 ONNX (TensorRT 11, or 10's STRONGLY_TYPED); "
        "weak: TensorRT 10's BuilderFlag.FP16 (default %(default)s)",
    )
    p.add_argument("--workspace-gib", type=float, default=4.0, help="builder workspace in GiB (default %(default)s)")
    p.add_argument(
        "--calib-clips",
        type=positive_int,
        default=None,
        help="calibration clips: of the FP16 ranges (from --val-shards, else synthetic; default 4) and, with "
        f"--int8, of the INT8 scales (default {DEFAULT_CLIPS})",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="also <name>.int8.onnx for CPUs (QDQ: ONNX Runtime, OpenVINO, TensorRT), calibrated on "
        "--calib-shards, gated with the rest",
    )
    p.add_argument(
        "--calib-shards",
        help="with --int8: shard folder whose videos calibrate the INT8 scales (default: --val-shards' folder)",
    )
    p.add_argument(
        "--calib-split",
        help="with --int8: split of --calib-shards (default train; val, the gate's own videos, only when named "
        "here, and the gate then says it is optimistic)",
    )
    p.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default=DEFAULT_QUANTIZER,
        help="with --int8: auto (default: nncf where installed, else onnxruntime), nncf (the [cpu] extra) or "
        "onnxruntime (ONNX Runtime's quantize_static)",
    )
    add_gate_args(p)
    return p


def parse_input_size_or_auto(text: str) -> str | int | tuple[int, int]:
    """`export.onnx.parse_input_size`, plus 'auto' (see `resolve_size`)."""
    return parse_input_size(text, ("auto", *SIZE_WORDS))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out) if args.out else default_out_dir(args.name)
    head: dict = {"settings": {**vars(args), "out": str(out), "size": resolve_size(args.size, args.val_shards)}}
    try:
        # read once, here, for the report's head too
        model, source = load_model(args.name, args.checkpoint, other_architecture=args.allow_other_architecture)
        head.update(weights=source.weights, warning=source.random_weights_warning())
        r = export_engine(
            model,
            source=source,
            out_dir=out,
            thresholds=thresholds_from(args),
            **{k: getattr(args, k) for k in ENGINE_ARGS},
        )
    except CheckFailed as e:
        print(f"error: {e}", file=sys.stderr)
        write_json(out / "report.json", {**head, "failed": str(e), "report": e.report, "passed": False})
        return EXIT_FAILED
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    steps = {"onnx": r.onnx, "fp16": r.fp16, "engine": r.engine, "int8": r.int8, "artifacts": r.artifacts}
    write_json(out / "report.json", {**head, **steps, "status": r.status, "passed": r.status == EXIT_OK})
    print("\n".join(summary_lines(r)))
    if isinstance(r.engine, dict):
        print(f"error: no engine was built: {r.engine['missing']}", file=sys.stderr)
    print(f"report: {out / 'report.json'}")
    return r.status


if __name__ == "__main__":
    sys.exit(main())
