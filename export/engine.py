"""FP16 ONNX -> TensorRT engine (TensorRT 10 and 11).

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
One optimisation profile covers batch 1..max_batch, tuned for opt_batch.
The timing cache is loaded when present and saved after the build, so
rebuilds skip most kernel timing. Without TensorRT or a CUDA GPU,
`build_engine` raises `MissingDependencyError` saying what is missing: it
never claims an engine it did not build.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from export.errors import ExportError, MissingDependencyError
from export.onnxfile import onnx_clip_shape
from export.outputs import publish
from export.runtime import import_tensorrt
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


def missing_requirements(trt_import=import_tensorrt, cuda: bool | None = None, short: bool = False) -> str | None:
    """What stops an engine build here, in words (with what to do; `short`: only what is missing), or None
    when nothing does."""
    missing = []
    try:
        trt_import()
    except MissingDependencyError as e:
        missing.append("TensorRT is not installed" if short else str(e))
    if not (torch.cuda.is_available() if cuda is None else cuda):
        missing.append("no CUDA GPU is visible" if short else NO_GPU)
    return ("; " if not short else " and ").join(missing) or None


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
