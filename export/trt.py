"""`python -m export.trt NAME`: a zoo model to a gated TensorRT FP16 engine.

    python -m export.trt tpn_r50_f8s8 --checkpoint ckpt.pth --val-shards shards/k400

Runs `export.engine_export.export_engine` (ONNX -> FP16 ONNX -> engine,
built by `export.tensorrt`, then the Top-1 gate of every file made) and
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
from pathlib import Path

from export.engine_export import ENGINE_ARGS, export_engine, resolve_size, summary_lines
from export.errors import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, CheckFailed, ExportError, positive_int
from export.onnx import SIZE_WORDS, add_model_args, parse_input_size
from export.outputs import default_out_dir, write_json
from export.runtime import TRT_INSTALL
from export.source import load_model
from export.validate import add_gate_args, thresholds_from


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
        default=4,
        help="FP16 calibration clips (from --val-shards, else synthetic; default %(default)s)",
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
    steps = {"onnx": r.onnx, "fp16": r.fp16, "engine": r.engine, "artifacts": r.artifacts}
    write_json(out / "report.json", {**head, **steps, "status": r.status, "passed": r.status == EXIT_OK})
    print("\n".join(summary_lines(r)))
    if isinstance(r.engine, dict):
        print(f"error: no engine was built: {r.engine['missing']}", file=sys.stderr)
    print(f"report: {out / 'report.json'}")
    return r.status


if __name__ == "__main__":
    sys.exit(main())
