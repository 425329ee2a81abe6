"""One call signature for exported artifacts: `runner(clips) -> logits`, torch in and out.

    runner = export.runtime.load("exports/tpn_r50_f8s8/tpn_r50_f8s8.fp16.onnx")
    logits = runner(clips)  # (N, 3, T, H, W) float32 -> (N, num_classes) float32

`.onnx` files run in ONNX Runtime (the CUDA provider when onnxruntime-gpu
and a GPU are present, `pip install -e ".[gpu]"`, else the CPU provider)
or, `backend="openvino"`, in OpenVINO, which also runs its IR (`.xml`);
`.engine` / `.plan` files run in TensorRT. `auto` picks, on a CPU, the
fastest runtime installed for the file: OpenVINO (the `[cpu]` extra) for
FP32 and INT8 files and IRs, ONNX Runtime for FP16 files (the precision
they were checked in); on a GPU, CUDA. The runner's `backend` and
`precision` say what ran: OpenVINO runs an FP32 or INT8 model's float
parts in FP32 (its CPU plugin would pick bf16 on CPUs that have it unless
told; `openvino_precision="bf16"` asks for it). Outputs are float32 logits on
the runner's device (the GPU when there is one); inputs may live anywhere
and are cast to the file's input type. On the GPU both ONNX Runtime and
TensorRT read and write torch's CUDA tensors in place. Batches larger than
an engine's optimisation profile are split. To refuse a file whose Top-1
gate marker does not hold, load it with `export.marker.load_validated`.
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from export.errors import ExportError, MissingDependencyError

Backend = Literal["auto", "ort-cpu", "ort-cuda", "trt", "openvino"]
BACKENDS: tuple[str, ...] = ("auto", "ort-cpu", "ort-cuda", "trt", "openvino")
ENGINE_SUFFIXES = (".engine", ".plan")
OPENVINO_SUFFIXES = (".xml",)
CPU_EXTRA_HINT = "pip install -e '.[cpu]' (OpenVINO and NNCF)"
TRT_INSTALL = (
    "install TensorRT with `pip install --extra-index-url https://pypi.nvidia.com tensorrt` "
    "(it needs an NVIDIA GPU with a recent driver)"
)


def pick_backend(
    path: str | os.PathLike,
    backend: Backend,
    *,
    ort_providers: list[str],
    cuda: bool,
    openvino: bool = False,
    precision: str = "fp32",
) -> str:
    """The concrete backend for `path` (see the module docstring): engines need TensorRT, IRs OpenVINO; ONNX
    prefers CUDA when usable, else OpenVINO when installed for FP32 and INT8 files (pure)."""
    is_engine = str(path).endswith(ENGINE_SUFFIXES)
    is_ir = str(path).endswith(OPENVINO_SUFFIXES)
    if backend == "auto":
        if is_engine:
            return "trt"
        if is_ir:
            return "openvino"
        if cuda and "CUDAExecutionProvider" in ort_providers:
            return "ort-cuda"
        return "openvino" if openvino and precision != "fp16" else "ort-cpu"
    if backend == "openvino" and is_engine:
        raise ExportError(f"{path} is a TensorRT engine; OpenVINO runs .onnx files and its .xml IR")
    if backend != "openvino" and is_ir:
        raise ExportError(f"{path} is an OpenVINO IR: run it with backend 'openvino' (or 'auto')")
    if backend == "trt" and not is_engine:
        raise ExportError(f"{path} is not a TensorRT engine (.engine/.plan): build one with python -m export.trt")
    if backend.startswith("ort") and is_engine:
        raise ExportError(f"{path} is a TensorRT engine; ONNX Runtime runs .onnx files")
    if backend == "ort-cuda" and not (cuda and "CUDAExecutionProvider" in ort_providers):
        raise MissingDependencyError(
            'ONNX Runtime\'s CUDA provider is not available: install onnxruntime-gpu (pip install -e ".[gpu]") '
            "on a machine with an NVIDIA GPU, or use backend='ort-cpu'"
        )
    return backend


class Runner:
    """Base of the runners: `__call__(x) -> logits` plus what callers need to know."""

    backend: str
    device: torch.device
    input_shape: tuple  # (None or batch, 3, T, H, W)
    max_batch: int | None = None
    precision: str = "fp32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[1:]) != tuple(self.input_shape[1:]):
            want = ", ".join(map(str, self.input_shape[1:]))
            raise ValueError(f"{self.backend} artifact takes clips of shape (N, {want}), got {tuple(x.shape)}")
        step = self.max_batch or x.shape[0]
        outs = [self._run(x[i : i + step].float().contiguous()) for i in range(0, x.shape[0], step)]
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


def ort_session_options(threads: int | None = None, level: str = "all"):
    """Session options: graph optimisation level, intra-op threads, no spinning.

    threads: None for one intra-op thread per usable core, 0 for ONNX
    Runtime's own choice (one per physical core), else that many.
    ORT's intra-op threads spin-wait after each run by default, holding
    the cores that whatever runs next (the PyTorch reference in the gate,
    the next backend in the benchmark) needs; spinning is turned off.
    """
    import onnxruntime as ort

    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    so = ort.SessionOptions()
    so.graph_optimization_level = levels[level]
    so.intra_op_num_threads = len(os.sched_getaffinity(0)) if threads is None else threads
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def open_session(
    model: str | os.PathLike | bytes,
    *,
    providers: Sequence = ("CPUExecutionProvider",),
    threads: int | None = None,
    level: str = "all",
):
    """An ONNX Runtime session for an ONNX file or a serialised model, with `ort_session_options`.

    The one place the toolkit opens a session, so every run (the export
    checks, the gate, the runtime, the benchmarks) gets the same options.
    """
    import onnxruntime as ort

    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, ort_session_options(threads, level), providers=list(providers))


# ONNX element types -> torch dtypes for I/O binding
ORT_TYPES = {"tensor(float)": torch.float32, "tensor(float16)": torch.float16}


class OrtRunner(Runner):
    """ONNX Runtime; on CUDA, torch's tensors are bound to the session in place (I/O binding).

    On the GPU the session runs on a CUDA stream of its own that torch
    created (ORT treats stream handle 0, torch's default stream, as "none"),
    ordered after the caller's stream and before it again with events, and
    the run does not synchronise the host: inputs and outputs stay on the
    GPU, with no round trip through host memory. Convolutions run in the
    ONNX file's precision (an FP16 ONNX computes in FP16), with TF32 off
    unless `tf32=True`, so an FP32 file runs the arithmetic it was gated
    with.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        cuda: bool,
        threads: int | None = None,
        level: str = "all",
        tf32: bool = False,
    ) -> None:
        import onnxruntime as ort

        self.backend = "ort-cuda" if cuda else "ort-cpu"
        self.device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        providers = cuda_providers(self.device.index or 0, self.stream, tf32) if cuda else ["CPUExecutionProvider"]
        self.session = open_session(path, providers=providers, threads=threads, level=level)
        if cuda and "CUDAExecutionProvider" not in self.session.get_providers():
            raise MissingDependencyError(
                f"ONNX Runtime could not start its CUDA provider for {path} (see its log above)"
            )
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        self.input_dtype, self.output_dtype = _torch_dtype(inp.type, path), _torch_dtype(out.type, path)
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inp.shape)
        self.max_batch = self.input_shape[0]
        self.num_classes = out.shape[-1] if isinstance(out.shape[-1], int) else None
        recorded = self.session.get_modelmeta().custom_metadata_map.get("tpn.precision", "fp32")
        self.precision = "int8" if recorded.startswith("int8") else "fp16" if recorded.startswith("fp16") else "fp32"
        if self.input_dtype == torch.float16:
            self.precision = "fp16"
        self.run_options = ort.RunOptions()
        # the caller orders its work after ours with an event: ORT need not block the host
        self.run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            y = self.session.run([self.output_name], {self.input_name: x.cpu().to(self.input_dtype).numpy()})[0]
            return torch.from_numpy(y).float()
        return self._run_bound(x.to(self.device, self.input_dtype).contiguous())

    def _run_bound(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, T, H, W) on the GPU -> (N, K) logits on the GPU, without leaving it."""
        caller = torch.cuda.current_stream(self.device)
        out = torch.empty((x.shape[0], self.num_classes), dtype=self.output_dtype, device=self.device)
        b = self.session.io_binding()
        idx = self.device.index or 0
        b.bind_input(self.input_name, "cuda", idx, _np_dtype(self.input_dtype), tuple(x.shape), x.data_ptr())
        b.bind_output(self.output_name, "cuda", idx, _np_dtype(self.output_dtype), tuple(out.shape), out.data_ptr())
        self.stream.wait_stream(caller)  # x (and out's memory) are ready before ORT's kernels start
        self.session.run_with_iobinding(b, self.run_options)
        caller.wait_stream(self.stream)  # the caller's next kernels see the logits
        x.record_stream(self.stream)  # x's memory is not reused before ORT has read it
        return out.float()


def cuda_providers(device_index: int, stream: torch.cuda.Stream, tf32: bool) -> list:
    """CUDA provider options: our device, our stream (no host sync needed), TF32 only when asked."""
    options = {
        "device_id": str(device_index),
        "user_compute_stream": str(stream.cuda_stream),
        "use_tf32": "1" if tf32 else "0",
    }
    return [("CUDAExecutionProvider", options), "CPUExecutionProvider"]


def _torch_dtype(onnx_type: str, path) -> torch.dtype:
    if onnx_type not in ORT_TYPES:
        raise ExportError(f"{path} has I/O of type {onnx_type}; this runtime feeds float32 or float16 clips")
    return ORT_TYPES[onnx_type]


def _np_dtype(dtype: torch.dtype) -> type:
    return np.float16 if dtype == torch.float16 else np.float32


class TrtRunner(Runner):
    """A deserialised TensorRT engine run on a side CUDA stream (TensorRT warns against the default one)."""

    def __init__(self, path: str | os.PathLike) -> None:
        trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise MissingDependencyError(f"running {path} needs a CUDA GPU; torch sees none")
        self.trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(path).read_bytes())
        if self.engine is None:
            raise ExportError(
                f"TensorRT could not load {path}: it was built by another TensorRT version or GPU; rebuild it"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        _, _, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)  # (min, opt, max)
        self.input_shape = (None, *tuple(hi)[1:])
        self.max_batch = int(hi[0])
        self.num_classes = int(self.engine.get_tensor_shape(self.output_name)[-1])
        self.backend, self.precision = "trt", "fp16"
        self.device = torch.device("cuda", torch.cuda.current_device())
        self.stream = torch.cuda.Stream(self.device)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        self.context.set_input_shape(self.input_name, tuple(x.shape))
        shape = tuple(self.context.get_tensor_shape(self.output_name))
        out = torch.empty(shape, dtype=torch.float32, device=self.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ExportError("TensorRT failed to run the engine (see its log above)")
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        x.record_stream(self.stream)  # keep x alive until the engine has read it
        return out


def openvino_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


def import_openvino():
    try:
        import openvino
    except ImportError:
        raise MissingDependencyError(f"OpenVINO is not installed: {CPU_EXTRA_HINT}") from None
    return openvino


def file_precision(path: str | os.PathLike) -> str:
    """What an exported file says of its precision ("fp32", "fp16", "int8"), from its metadata."""
    from export.onnxfile import read_metadata

    if str(path).endswith(".onnx"):
        recorded = read_metadata(path).get("precision", "fp32")  # an unreadable file: ExportError naming it
    elif str(path).endswith(OPENVINO_SUFFIXES):
        recorded = openvino_metadata(path).get("precision", "fp32")
    else:
        return "fp16"
    return "int8" if recorded.startswith("int8") else "fp16" if recorded.startswith("fp16") else "fp32"


def openvino_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The tpn metadata an OpenVINO IR keeps as runtime info (export.int8 writes it), read from its .xml."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(str(path)).getroot()
    except (ET.ParseError, OSError) as err:
        raise ExportError(f"{path} is not an OpenVINO IR that can be read ({err})") from None
    tpn = root.find("rt_info/tpn")
    return {child.tag: child.attrib.get("value", "") for child in tpn} if tpn is not None else {}


@functools.cache
def openvino_core():
    """The one OpenVINO Core of this process, kept until it exits.

    On Linux, OpenVINO's CPU plugin swaps in a signal stack of its own for the calling thread when a Core first
    compiles a model, and puts back the one it found (freeing its own) when that Core and its models are gone.
    With a Core per model, two models freed in the order they were made leave the thread with the freed stack
    registered, and the next signal the process handles on that stack (a child process ending, with a Python
    handler for SIGCHLD) kills it with SIGSEGV. One Core that lives as long as the process never puts one back.
    """
    return import_openvino().Core()


class OpenVinoRunner(Runner):
    """OpenVINO's CPU plugin, its inference precision set (not left to the CPU's default), latency mode."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None, precision: str = "f32") -> None:
        import_openvino()  # a missing [cpu] extra is named even after a Core was made
        if precision not in ("f32", "bf16"):
            raise ExportError(f"openvino_precision must be 'f32' or 'bf16', got {precision!r}")
        core = openvino_core()
        try:
            model = core.read_model(str(path))
        except Exception as err:  # OpenVINO raises its own RuntimeError family
            raise ExportError(f"OpenVINO cannot read {path}: {err}") from None
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": len(os.sched_getaffinity(0)) if threads is None else threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        inp, out = self.compiled.input(0), self.compiled.output(0)
        shape = inp.get_partial_shape()
        self.input_shape = tuple(None if d.is_dynamic else d.get_length() for d in shape)
        self.max_batch = self.input_shape[0]
        self.num_classes = out.get_partial_shape()[-1].get_length()
        self.backend, self.device = "openvino", torch.device("cpu")
        kind = file_precision(path)
        ran = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what the plugin settled on (an ov.Type)
        self.inference_precision = ran.to_string() if hasattr(ran, "to_string") else str(ran)
        self.precision = kind if kind != "fp32" else ("bf16" if self.inference_precision == "bf16" else "fp32")

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        y = self.request.infer({0: x.cpu().numpy()})[self.compiled.output(0)]
        return torch.from_numpy(np.array(y, dtype=np.float32, copy=True))


def import_tensorrt():
    try:
        import tensorrt
    except ImportError:
        raise MissingDependencyError(f"TensorRT is not installed: {TRT_INSTALL}") from None
    return tensorrt


def ort_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError(
            "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
        ) from None
    return ort.get_available_providers()


def gpu_build_hidden(providers: list[str], cuda: bool) -> str | None:
    """A hint when onnxruntime-gpu is installed but the CPU build's files won (both install `onnxruntime`)."""
    if not cuda or "CUDAExecutionProvider" in providers:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        gpu = version("onnxruntime-gpu")
    except PackageNotFoundError:
        return None
    return (
        f"onnxruntime-gpu {gpu} is installed but ONNX Runtime offers no CUDA provider: the CPU package "
        "onnxruntime installs the same `onnxruntime` package and its files won; run "
        "`pip install --force-reinstall --no-deps onnxruntime-gpu`"
    )


def load(
    path: str | os.PathLike,
    *,
    backend: Backend = "auto",
    threads: int | None = None,
    level: str = "all",
    tf32: bool = False,
    openvino_precision: str = "f32",
) -> Runner:
    """A runner for an `.onnx` file, an OpenVINO `.xml` or a TensorRT `.engine`; see the module docstring.

    tf32: let ONNX Runtime's CUDA provider use TF32 in FP32 convolutions
        (PyTorch's default on the GPU; off so FP32 files compute in FP32).
    openvino_precision: OpenVINO's inference precision for the model's float
        parts, "f32" (default) or "bf16".
    """
    if not Path(path).is_file():
        raise ExportError(f"{path} does not exist")
    if backend not in BACKENDS:
        raise ExportError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    cuda = torch.cuda.is_available()
    native = str(path).endswith(ENGINE_SUFFIXES + OPENVINO_SUFFIXES)
    providers = [] if native else ort_providers()
    precision = file_precision(path)
    chosen = pick_backend(
        path, backend, ort_providers=providers, cuda=cuda, openvino=openvino_installed(), precision=precision
    )
    if chosen == "trt":
        return TrtRunner(path)
    if chosen == "openvino":
        return OpenVinoRunner(path, threads=threads, precision=openvino_precision)
    if chosen == "ort-cpu" and backend == "auto" and (hint := gpu_build_hidden(providers, cuda)):
        warnings.warn(hint, stacklevel=2)
    return OrtRunner(path, cuda=chosen == "ort-cuda", threads=threads, level=level, tf32=tf32)
