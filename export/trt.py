"""FP16 ONNX -> TensorRT engine, and the whole export: ONNX -> FP16 ONNX -> engine -> Top-1 gate of each.

    python -m export.trt tpn_r50_f8s8 --checkpoint ckpt.pth --val-shards shards/k400

Precision comes from the mixed-precision ONNX (`export.fp16`), never from
a blanket builder flag, so what the gate validated in ONNX Runtime is what
TensorRT builds:
  - TensorRT 11 has no BuilderFlag.FP16: every network is strongly typed
    (`builder.create_network(0)`), tensor types come from the ONNX;
  - TensorRT 10 gets the same behaviour from
    NetworkDefinitionCreationFlag.STRONGLY_TYPED (precision flags are not
    allowed with it). `typing="weak"` instead sets BuilderFlag.FP16 on a
    weakly typed network, as TensorRT 10 used to: the builder may then run
    any layer in FP16, including those the ONNX keeps in FP32.
TensorRT 11 removed the FP16 builder flag (strong typing only). One optimisation profile covers batch
1..max_batch, tuned for opt_batch. The timing cache is loaded when present
and saved after the build, so rebuilds skip most kernel timing.

Every file made is gated in one pass over the validation shards
(`export.validate.gate`: the data is decoded and PyTorch runs once), and
each passing file gets its own `.validated.json`. Without TensorRT or a
CUDA GPU the CLI still writes and gates the ONNX and FP16 ONNX files
(marking each whose gate passes on --val-shards), lists each file with
its gate result, then exits with status 2 and says what is missing (1 if
a gate did not pass); it never claims an engine it did not build.
Without --checkpoint the first line of the output, and report.json, say
that the weights are random.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

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
from export.onnx import SIZE_WORDS, add_model_args, export_onnx, parse_input_size
from export.onnxfile import onnx_clip_shape
from export.outputs import default_out_dir, publish, write_json
from export.runtime import TRT_INSTALL, import_tensorrt
from export.source import ModelSource, load_model
from pipeline import atomic_write_bytes, fsync_file, staging_dir

NO_GPU = (
    "no CUDA GPU is visible (torch.cuda.is_available() is False): TensorRT builds and runs engines on an "
    "NVIDIA GPU; run this on a machine with one and its driver installed"
)


@dataclass(frozen=True)
class BuildMode:
    """How to ask a given TensorRT for a network whose precision is the ONNX's."""

    typing: str  # "strong" or "weak"
    network_flags: int
    builder_flags: tuple[str, ...]
    note: str


@dataclass
class TrtReport:
    onnx: str
    path: str
    tensorrt: str
    device: str
    typing: str
    builder_flags: list[str]
    profile: dict[str, list[int]]
    timing_cache: str
    timing_cache_loaded: bool
    timing_cache_bytes: int
    workspace_gib: float
    size_bytes: int
    build_seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.path}: TensorRT {self.tensorrt} on {self.device}, {self.typing}ly typed, profile batch "
            f"{self.profile['min'][0]}..{self.profile['max'][0]} (opt {self.profile['opt'][0]}), "
            f"{self.size_bytes / 2**20:.1f} MiB, built in {self.build_seconds:.0f}s"
            f"{' (timing cache reused)' if self.timing_cache_loaded else ''}"
        )


# ----------------------------------------------------------------- pure parts


def build_mode(trt: ModuleType, typing: str = "auto") -> BuildMode:
    """Network and builder flags for this TensorRT module (real, or a stand-in in tests)."""
    if typing not in ("auto", "strong", "weak"):
        raise ExportError(f"typing must be 'auto', 'strong' or 'weak', got {typing!r}")
    version = getattr(trt, "__version__", "?")
    if not hasattr(trt.BuilderFlag, "FP16"):  # TensorRT 11+
        if typing == "weak":
            raise ExportError(f"TensorRT {version} has no weak typing (BuilderFlag.FP16 was removed in 11)")
        return BuildMode("strong", 0, (), f"TensorRT {version}: always strongly typed; precision from the ONNX")
    strong = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if typing != "weak" and strong is not None:
        return BuildMode(
            "strong", 1 << int(strong), (), f"TensorRT {version}: STRONGLY_TYPED network; precision from the ONNX"
        )
    if typing == "strong":
        raise ExportError(f"TensorRT {version} has no NetworkDefinitionCreationFlag.STRONGLY_TYPED")
    return BuildMode(
        "weak",
        0,
        ("FP16",),
        f"TensorRT {version}: weakly typed with BuilderFlag.FP16; layers the ONNX keeps FP32 may still run in FP16",
    )


def profile_shapes(
    clip_shape: tuple[int, ...], *, opt_batch: int, max_batch: int, min_batch: int = 1
) -> dict[str, tuple[int, ...]]:
    """min / opt / max input shapes of the optimisation profile for (3, T, H, W) clips."""
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ExportError(f"need 1 <= min_batch <= opt_batch <= max_batch, got {min_batch}, {opt_batch}, {max_batch}")
    return {k: (b, *clip_shape) for k, b in (("min", min_batch), ("opt", opt_batch), ("max", max_batch))}


def missing_requirements(trt_import=import_tensorrt, cuda: bool | None = None) -> str | None:
    """What stops an engine build here, in words, or None when nothing does."""
    missing = []
    try:
        trt_import()
    except MissingDependencyError as e:
        missing.append(str(e))
    if not (torch.cuda.is_available() if cuda is None else cuda):
        missing.append(NO_GPU)
    return "; ".join(missing) or None


# ----------------------------------------------------------------- the build


def build_engine(
    fp16_onnx: str | Path,
    *,
    max_batch: int = 32,
    opt_batch: int = 8,
    timing_cache: str | Path | None = None,
    out: str | Path | None = None,
    workspace_gib: float = 4.0,
    typing: str = "auto",
) -> TrtReport:
    """Build `<name>.fp16.engine` (default: beside the ONNX) from a mixed-precision ONNX file.

    Raises MissingDependencyError without TensorRT or a CUDA GPU, and
    ExportError when TensorRT cannot parse or build the network.
    """
    src = Path(fp16_onnx)
    if not src.is_file():
        raise ExportError(f"{src} does not exist: make it with export.fp16.to_fp16")
    missing = missing_requirements()
    if missing:
        raise MissingDependencyError(missing)
    trt = import_tensorrt()
    out = Path(out) if out else src.with_name(src.name.removesuffix(".onnx") + ".engine")
    cache_path = Path(timing_cache) if timing_cache else out.parent / "timing.cache"
    mode = build_mode(trt, typing)
    shapes = profile_shapes(onnx_clip_shape(src), opt_batch=opt_batch, max_batch=max_batch)
    t0 = time.perf_counter()
    plan, cache_loaded, cache_bytes = _build(trt, src, mode, shapes, cache_path, workspace_gib)
    with staging_dir(out.parent) as stage:
        staged = stage / out.name
        staged.write_bytes(plan)
        fsync_file(staged)  # on disk before its final name, as every published file
        publish([staged], out.parent)
    atomic_write_bytes(cache_path, cache_bytes)
    return TrtReport(
        onnx=str(src),
        path=str(out),
        tensorrt=trt.__version__,
        device=torch.cuda.get_device_name(),
        typing=mode.typing,
        builder_flags=list(mode.builder_flags),
        profile={k: list(v) for k, v in shapes.items()},
        timing_cache=str(cache_path),
        timing_cache_loaded=cache_loaded,
        timing_cache_bytes=len(cache_bytes),
        workspace_gib=workspace_gib,
        size_bytes=out.stat().st_size,
        build_seconds=round(time.perf_counter() - t0, 1),
        notes=[mode.note],
    )


def _build(trt, src: Path, mode: BuildMode, shapes: dict, cache_path: Path, workspace_gib: float):
    """The TensorRT Python API calls; returns (plan bytes, cache reused?, cache bytes)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(mode.network_flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(src)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"TensorRT cannot parse {src}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    for flag in mode.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape(network.get_input(0).name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    previous = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(previous)
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT failed to build an engine from {src} (its log above says why)")
    return bytes(plan), bool(previous), bytes(config.get_timing_cache().serialize())


# ----------------------------------------------------------------- the whole export


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
    gate: object | None = None  # export.validate.GateReport
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

    onnx: object
    fp16: object
    engine: TrtReport | dict
    artifacts: list[ArtifactResult]
    status: int
    warning: str | None = None  # random weights


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
    calib_clips: int = 4,
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
    log=print,
) -> EngineExport:
    """ONNX -> FP16 ONNX -> engine, then one gate over every file made (the Top-1 gate with `val_shards`).

    `name_or_model` may be a zoo model already holding its weights, with
    `source` saying where they came from (as `export_onnx` takes it).
    Without TensorRT or a GPU the two ONNX files are still gated (ONNX
    Runtime) and, when the gate passes on `val_shards`, marked validated.
    """
    from export.fp16 import to_fp16
    from export.shards import validation_split
    from export.validate import Thresholds, gate

    # One model for every step: without a checkpoint its random weights must be the same throughout.
    model, loaded = load_model(name_or_model, checkpoint)
    source = source or loaded
    warning = source.random_weights_warning()
    if warning:
        log(warning)
    split = validation_split(val_shards, split) if val_shards else split
    missing = missing_requirements()
    if missing:
        log(f"note: no engine can be built here ({missing}); the ONNX and FP16 ONNX files are still made and gated")
    out_dir = Path(out_dir) if out_dir else default_out_dir(model.config.name)
    size = resolve_size(size, val_shards)
    onnx_r = export_onnx(model, source=source, out_dir=out_dir, size=size, opset=opset, seed=seed)
    log(onnx_r.summary())
    fp16_r = to_fp16(onnx_r.path, calibration=val_shards, split=split, num_clips=calib_clips, seed=seed)
    log(fp16_r.summary())
    arts = [ArtifactResult("onnx", onnx_r.path, True), ArtifactResult("fp16", fp16_r.path, True)]
    try:
        engine = build_engine(
            fp16_r.path, max_batch=max_batch, opt_batch=opt_batch, typing=typing, workspace_gib=workspace_gib
        )
        log(engine.summary())
        arts.append(ArtifactResult("engine", engine.path, True))
    except MissingDependencyError as e:
        engine = {"built": False, "missing": str(e)}
        arts.append(ArtifactResult("engine", None, False, missing=str(e)))
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
    return EngineExport(onnx_r, fp16_r, engine, arts, export_status(arts), warning)


def build_parser() -> argparse.ArgumentParser:
    from export.validate import add_gate_args

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
)


def summary_lines(r: EngineExport) -> list[str]:
    """The closing summary: every artifact with its gate result."""
    lines = ["artifacts:"] + [a.line() for a in r.artifacts]
    if r.warning:
        lines.append("random weights: the gates above say nothing about accuracy")
    return lines


def main(argv: list[str] | None = None) -> int:
    from export.validate import thresholds_from

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
