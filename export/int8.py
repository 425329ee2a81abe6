"""FP32 ONNX -> INT8 for CPUs, calibrated on real clips, the layers that cannot take it kept in float.

    python -m export.int8 exports/tpn_tiny/tpn_tiny_f8s4.onnx --calib-shards shards/demo

Writes `<name>.int8.onnx` beside the FP32 ONNX: a QDQ ONNX (INT8 weights
per output channel, INT8 activations with static scales), which runs in
ONNX Runtime and OpenVINO and is what TensorRT's explicit quantization
consumes; with `--ir`, OpenVINO's IR of the same model too
(`<name>.int8.xml` / `.bin`). The quantizer is NNCF where it is installed
(the `[cpu]` extra), else ONNX Runtime's `quantize_static` (U8
activations, S8 weights, static MinMax ranges), which needs nothing
beyond the core install; `--quantizer` names one. README's "INT8 on
CPUs" has the measurements behind the default.

Calibration clips are the model's test-protocol views (one per video, the
middle one), decoded by the toolkit's own loader from calibration shards. A
quarter of them (at least 16) is held out: scales come from the rest, and
the held-out clips judge each try, in the runtime the file will run in
(`export.runtime`'s choice for it). Accuracy first: when the INT8 model
agrees with the FP32 model's top class on fewer than `min_agreement` of
the held-out clips, the layers most hurt by quantization stay in float and
the model is quantized again: ranked once by the error each quantized
layer adds to its own output (its output's error against the FP32 model's,
less its input's), the top 1, 2, 4, ... of them, within `max_tries` tries
and `max_seconds`. The report lists the layers kept in float and each try's
speed. The Top-1 gate (`export.validate`) then judges the file on
validation shards like any other artifact.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from export.errors import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    CheckFailed,
    ExportError,
    MissingDependencyError,
    positive_int,
)
from export.fp16 import center_crop
from export.onnxfile import INPUT_NAME, add_metadata, load_onnx, onnx_clip_shape, read_metadata
from export.outputs import publish, write_json
from export import runtime
from export.runtime import CPU_EXTRA_HINT, ENGINE_SUFFIXES, OPENVINO_SUFFIXES, import_openvino, open_session
from export.shards import shard_fingerprint, validation_split, view_batches
from pipeline import ShardError, resolve_split, staging_dir, storage

DEFAULT_CLIPS = 256
MIN_HELD_OUT = 16
MIN_AGREEMENT = 0.99  # of held-out clips whose top class is the FP32 model's (the gate's own default)
MAX_TRIES = 5
MAX_SECONDS = 1800.0
QUANTIZERS = ("auto", "nncf", "onnxruntime")
# auto: NNCF where it is installed (the [cpu] extra), else ONNX Runtime. README's "INT8 on CPUs" has the
# measurements: NNCF's file kept the demo's trained model's predictions where ONNX Runtime's did not.
DEFAULT_QUANTIZER = "auto"
QUANTIZER_NAMES = {
    "nncf": "NNCF post-training quantization (QDQ; INT8 weights per channel, static INT8 activations)",
    "onnxruntime": "ONNX Runtime quantize_static (QDQ; S8 weights per channel, static U8 activations)",
}
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")  # the layers ranked for keeping in float


@dataclass
class Calibration:
    """The clips to calibrate on and what they are: where from, how many, and a fingerprint of the data."""

    clips: np.ndarray  # (N, 3, T, H, W) float32, normalised
    location: str
    split: str | None
    fingerprint: str
    optimistic: bool = False  # calibrated on the videos the gate judges
    notes: list[str] = field(default_factory=list)

    def record(self) -> dict:
        """What reports, markers and the INT8 files' metadata say of it."""
        return {
            "location": self.location,
            "split": self.split,
            "clips": int(len(self.clips)),
            "fingerprint": self.fingerprint,
            "optimistic": self.optimistic,
        }


@dataclass
class Try:
    kept_float: list[str]
    held_out_agreement: float
    max_abs_diff: float  # of the held-out clips' logits against the FP32 file's, same runtime
    ms_per_clip: float  # batch 1 on this machine's cores, in `Int8Report.backend`


@dataclass
class Int8Report:
    from_onnx: str
    path: str  # the QDQ INT8 ONNX
    openvino_ir: str | None
    calibration: dict
    quantizer: str
    backend: str  # where the held-out clips were judged and the speeds measured
    kept_float: list[str]
    tries: list[Try]
    held_out_agreement: float
    passed: bool  # the held-out clips agree with FP32 on at least min_agreement
    fp32_ms_per_clip: float  # the FP32 ONNX in `backend`
    fp32_ort_ms_per_clip: float  # the FP32 ONNX in ONNX Runtime on the CPU, today's CPU path, same threads
    seconds: float
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        kept = f"{len(self.kept_float)} layer(s) kept in float" if self.kept_float else "every layer quantized"
        c = self.calibration
        speed = self.tries[-1].ms_per_clip if self.tries else float("nan")
        notes = "".join(f"; {n}" for n in self.notes)
        return (
            f"{self.path}: INT8 by {self.quantizer.split(' (')[0]}, {kept}; agrees with FP32 on "
            f"{100 * self.held_out_agreement:.1f}% of held-out calibration clips ({c['clips']} clips of "
            f"{c['location']} split {c['split']}); {speed:.1f} ms per clip in {self.backend} vs the FP32 ONNX "
            f"{self.fp32_ms_per_clip:.1f} there and {self.fp32_ort_ms_per_clip:.1f} in ONNX Runtime (batch 1, "
            f"same threads){notes}"
        )


# ----------------------------------------------------------------- calibration data


def calibration_source(
    val_shards: str | None, val_split: str | None, calib_shards: str | None, calib_split: str | None
) -> tuple[str, str | None, bool]:
    """(shards, split, optimistic) to calibrate on: `calib_shards` (default: the validation shards' folder)
    at `calib_split` (default: train). The split the gate judges is refused unless asked for by name
    (`calib_split="val"`), and is then marked optimistic."""
    location = calib_shards or val_shards
    if location is None:
        raise ExportError("INT8 needs calibration clips: pass --calib-shards (a shard folder with a train split)")
    explicit = calib_split is not None
    try:
        split = resolve_split(str(location), calib_split or "train", "--calib-split")
    except (ShardError, OSError) as e:
        raise ExportError(
            f"calibration shards: {e}. Calibrate on clips the gate does not judge (--calib-shards DIR with a "
            "train split); --calib-split val calibrates on the gate's own videos (then the gate is optimistic)"
        ) from None
    same_data = val_shards is not None and _same(location, val_shards) and split == val_split
    if same_data and not explicit:
        raise ExportError(
            f"calibrating on {location} split {split!r} would tune the INT8 model on the videos its Top-1 gate "
            "judges: pass --calib-shards with other videos, or --calib-split val to do it anyway (the gate "
            "is then optimistic, and says so)"
        )
    return str(location), split, same_data


def _same(a, b) -> bool:
    place = lambda x: str(x).rstrip("/") if storage.is_remote(x) else str(Path(x).resolve())  # noqa: E731
    return place(a) == place(b)


def calibrate(
    model: str | os.PathLike | onnx.ModelProto, location: str, split: str | None, clips: int, optimistic: bool = False
) -> Calibration:
    """One test view per video (the middle one) of the first `clips` videos, decoded by the loader, at the
    input size of the ONNX model (a file's graph is read without its weights)."""
    name = read_metadata(model).get("model")
    if name is None:
        raise ExportError("the ONNX file has no 'tpn.model' metadata: export it with export.onnx")
    return calibration_clips(name, onnx_clip_shape(model)[2:], location, split, clips, optimistic)


def calibration_clips(
    name: str, size: tuple[int, int], location: str, split: str | None, clips: int, optimistic: bool = False
) -> Calibration:
    """`calibrate` for zoo model `name` at `size` (height, width)."""
    import tpn

    shape = (None, None, *size)
    spec = tpn.get_config(name).clip
    batches = view_batches(location, spec, batch_size=8, split=split, what="calibration shards")
    got: list[np.ndarray] = []
    with contextlib.closing(batches):
        for views, _ in batches:  # (N, V, 3, T, H, W)
            got.extend(center_crop(views[:, views.shape[1] // 2].cpu().numpy(), shape[2], shape[3]))
            if len(got) >= clips:
                break
    if not got:
        raise ExportError(f"no clips in {location} (split {split!r}): calibration needs videos")
    notes = []
    if len(got) < clips:
        notes.append(f"{location} split {split!r} holds {len(got)} videos: calibrated on {len(got)} clips, not {clips}")
    fp = shard_fingerprint(location, split)
    array = np.ascontiguousarray(np.stack(got[:clips]), np.float32)
    return Calibration(array, location, split, fp.sha256, optimistic, notes)


def split_held_out(clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scales, held out): every fourth clip held out, at least MIN_HELD_OUT when there are enough (pure)."""
    n = len(clips)
    held = max(min(MIN_HELD_OUT, n // 2), n // 4)
    step = max(1, n // held) if held else n + 1
    mask = np.zeros(n, bool)
    mask[::step] = True
    mask[np.cumsum(mask) > held] = False
    return clips[~mask], clips[mask]


# ----------------------------------------------------------------- quantizing


def import_nncf():
    try:
        import nncf
    except ImportError:
        raise MissingDependencyError(
            f"the NNCF quantizer is not installed: {CPU_EXTRA_HINT}, or pass --quantizer onnxruntime"
        ) from None
    import logging

    nncf.set_log_level(logging.ERROR)
    return nncf


def quantize(
    fp32_onnx: str | Path,
    clips: np.ndarray,
    out: Path,
    keep_float: list[str] = (),
    calibration: dict | None = None,
    quantizer: str = DEFAULT_QUANTIZER,
) -> Path:
    """A QDQ INT8 ONNX of `fp32_onnx` with static scales from `clips` (N, 3, T, H, W); `keep_float`: node
    names left in float. The FP32 file's tpn metadata is kept, with precision int8 and the calibration."""
    if quantizer not in QUANTIZERS:
        raise ExportError(f"unknown quantizer {quantizer!r}: use one of {', '.join(QUANTIZERS)}")
    quantizer = resolve_quantizer(quantizer)
    try:
        model = (
            _nncf_qdq(fp32_onnx, clips, keep_float) if quantizer == "nncf" else _ort_qdq(fp32_onnx, clips, keep_float)
        )
    except ExportError:
        raise
    except Exception as err:  # the quantizer's own failure: an op it cannot handle, say
        raise ExportError(
            f"{quantizer} could not quantize {fp32_onnx}: {type(err).__name__}: {err}"
            + (". Try --quantizer onnxruntime" if quantizer == "nncf" else ". Try --quantizer nncf")
        ) from None
    meta = read_metadata(fp32_onnx)
    others = [p for p in model.metadata_props if not p.key.startswith("tpn.")]
    del model.metadata_props[:]
    model.metadata_props.extend(others)
    extra = {"calibration": json.dumps(calibration)} if calibration else {}
    add_metadata(model, {**meta, "precision": "int8", **extra})
    onnx.save(model, str(out))
    return out


def ready_quantizer(quantizer: str) -> str:
    """`resolve_quantizer`, refused with MissingDependencyError (naming the extra) when it is not installed:
    asked before any calibration clip is decoded."""
    quantizer = resolve_quantizer(quantizer)
    if quantizer == "nncf":
        import_nncf()
    return quantizer


def resolve_quantizer(quantizer: str) -> str:
    """`auto` -> "nncf" where NNCF is installed, else "onnxruntime"; a named one as it is."""
    if quantizer != "auto":
        return quantizer
    import importlib.util

    return "nncf" if importlib.util.find_spec("nncf") is not None else "onnxruntime"


def _nncf_qdq(fp32_onnx, clips: np.ndarray, keep_float) -> onnx.ModelProto:
    nncf = import_nncf()
    items = [{INPUT_NAME: clips[i : i + 1]} for i in range(len(clips))]
    ignored = nncf.IgnoredScope(names=list(keep_float), validate=False) if keep_float else None
    model = onnx.load(str(fp32_onnx))
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF's progress bars; this module reports each try
        return nncf.quantize(model, nncf.Dataset(items), subset_size=len(items), ignored_scope=ignored)


class _Reader:
    """ONNX Runtime's calibration reader over an array of clips."""

    def __init__(self, clips: np.ndarray, input_name: str):
        self.items = iter([{input_name: clips[i : i + 1]} for i in range(len(clips))])

    def get_next(self):
        return next(self.items, None)


def _ort_qdq(fp32_onnx, clips: np.ndarray, keep_float) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="tpn-int8-") as tmp:
        prepared, out = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        # U8 activations, S8 weights per output channel, MinMax ranges.
        quantize_static(
            str(prepared),
            str(out),
            _Reader(clips, INPUT_NAME),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(keep_float),
            calibrate_method=CalibrationMethod.MinMax,
        )
        return onnx.load(str(out))


def weighted_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def layer_errors(fp32: onnx.ModelProto, qdq: onnx.ModelProto, clips: np.ndarray) -> dict[str, float]:
    """Per weighted layer, the error it adds: the relative L2 error of its output against the FP32 model's,
    less that of its input (what it was handed)."""
    nodes = weighted_nodes(fp32)
    names = sorted({t for n in nodes for t in (n.input[0], n.output[0])})
    ref, got = _tensors(fp32, names, clips), _tensors(qdq, names, clips)
    err = {t: float(np.linalg.norm(got[t] - ref[t]) / (np.linalg.norm(ref[t]) + 1e-12)) for t in names if t in got}
    return {n.name: err.get(n.output[0], 0.0) - err.get(n.input[0], 0.0) for n in nodes}


def _tensors(model: onnx.ModelProto, names: list[str], clips: np.ndarray) -> dict[str, np.ndarray]:
    """The values of `names` in `model` on `clips` (made graph outputs for one run in ONNX Runtime)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {o for n in probe.graph.node for o in n.output} | {i.name for i in probe.graph.input}
    wanted = [t for t in names if t in present and t not in {o.name for o in probe.graph.output}]
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted)
    session = open_session(probe.SerializeToString(), level="disable")
    outputs = [o.name for o in session.get_outputs()]
    values = session.run(outputs, {session.get_inputs()[0].name: clips})
    return {n: v.astype(np.float64) for n, v in zip(outputs, values)}


def ms_per_clip(runner, clip: np.ndarray, rounds: int = 3) -> float:
    """Median ms of one clip at batch 1 (a rough figure for the report; benchmarks.infer measures properly)."""
    x = torch.from_numpy(clip[:1])
    runner(x)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        runner(x)
        times.append(1000 * (time.perf_counter() - t0))
    return float(np.median(times))


def _logits(runner, clips: np.ndarray) -> np.ndarray:
    return runner(torch.from_numpy(clips)).numpy()


def to_int8(
    fp32_onnx: str | Path,
    calibration: Calibration,
    *,
    out: str | Path | None = None,
    quantizer: str = DEFAULT_QUANTIZER,
    backend: str = "auto",
    min_agreement: float = MIN_AGREEMENT,
    max_tries: int = MAX_TRIES,
    max_seconds: float = MAX_SECONDS,
    ir: bool = False,
    log: Callable[[str], None] = lambda _: None,
) -> Int8Report:
    """`<name>.int8.onnx` (and with `ir` its OpenVINO IR) beside the FP32 ONNX, accuracy first (see the module
    docstring). Raises CheckFailed, the file kept under its name, when no try within the bounds agrees on
    `min_agreement` of the held-out clips."""
    t0 = time.perf_counter()
    src = Path(fp32_onnx)
    fp32 = check_source(src)
    quantizer = ready_quantizer(quantizer)  # refused before anything is written
    if ir:
        import_openvino()
    out = Path(out) if out is not None else src.with_name(src.name.removesuffix(".onnx") + ".int8.onnx")
    scales, held = split_held_out(calibration.clips)
    reference_runner = runtime.load(src, backend=backend)
    reference = _logits(reference_runner, held)
    fp32_ms = ms_per_clip(reference_runner, held)
    ort_ms = (
        fp32_ms if reference_runner.backend == "ort-cpu" else ms_per_clip(runtime.load(src, backend="ort-cpu"), held)
    )
    del reference_runner
    tries: list[Try] = []
    ranking, kept, ran = None, [], backend
    with staging_dir(out.parent) as stage:
        candidate = stage / out.name
        while True:
            quantize(src, scales, candidate, kept, calibration.record(), quantizer)
            runner = runtime.load(candidate, backend=backend)
            ran = runner.backend
            logits = _logits(runner, held)
            agree = float((logits.argmax(1) == reference.argmax(1)).mean())
            diff = float(np.abs(logits - reference).max())
            tries.append(Try(list(kept), agree, diff, ms_per_clip(runner, held)))
            del runner
            log(f"INT8 try {len(tries)}: {len(kept)} layer(s) in float, held-out agreement {100 * agree:.1f}%")
            if agree >= min_agreement or len(tries) >= max_tries or time.perf_counter() - t0 > max_seconds:
                break
            if ranking is None:
                errors = layer_errors(fp32, onnx.load(str(candidate)), scales[: min(len(scales), 16)])
                ranking = sorted(errors, key=errors.get, reverse=True)
            kept = ranking[: max(1, 2 * len(kept))]
        files = []
        if ir:
            xml, binary = save_openvino_ir(candidate, stage / out.name.replace(".onnx", ".xml"))
            files = [binary, xml]  # the weights first: an .xml never lacks its .bin
        dest = publish([candidate], out.parent)
        xml_dest = publish(files, out.parent) if files else None
    report = Int8Report(
        from_onnx=str(src),
        path=str(dest),
        openvino_ir=str(xml_dest) if xml_dest is not None else None,
        calibration=calibration.record(),
        quantizer=QUANTIZER_NAMES[quantizer],
        backend=ran,
        kept_float=tries[-1].kept_float,
        tries=tries,
        held_out_agreement=tries[-1].held_out_agreement,
        passed=tries[-1].held_out_agreement >= min_agreement,
        fp32_ms_per_clip=fp32_ms,
        fp32_ort_ms_per_clip=ort_ms,
        seconds=round(time.perf_counter() - t0, 2),
        notes=list(calibration.notes),
    )
    if not report.passed:
        raise CheckFailed(
            f"the INT8 model agrees with FP32 on {100 * report.held_out_agreement:.1f}% of the held-out calibration "
            f"clips (needs {100 * min_agreement:.0f}%) after {len(tries)} tries; kept as {dest}, not validated",
            report,
        )
    return report


def check_source(src: str | Path) -> onnx.ModelProto:
    """The FP32 ONNX file to quantize, read; an engine, an IR, a missing, unreadable or non-FP32 file refused."""
    src = Path(src)
    if str(src).endswith((*ENGINE_SUFFIXES, *OPENVINO_SUFFIXES)):
        raise ExportError(
            f"{src} is a built engine or IR: INT8 quantizes the FP32 ONNX export (python -m export.onnx NAME "
            "--size test), and TensorRT's INT8 engine is built from the INT8 ONNX this writes"
        )
    if not src.is_file():
        raise ExportError(f"{src} does not exist: export the model first (python -m export.onnx NAME)")
    model = load_onnx(src)
    if (precision := read_metadata(model).get("precision", "fp32")) != "fp32":
        raise ExportError(f"{src} is not an FP32 export ({precision}): quantize the FP32 ONNX")
    return model


# ----------------------------------------------------------------- OpenVINO


def save_openvino_ir(onnx_path: Path, xml: Path) -> list[Path]:
    """The ONNX file as OpenVINO's IR (`.xml` + `.bin`), its tpn metadata kept as runtime info."""
    ov = import_openvino()
    try:
        model = runtime.openvino_core().read_model(str(onnx_path))
    except Exception as err:  # OpenVINO raises its own RuntimeError family
        raise ExportError(f"OpenVINO cannot read {onnx_path}: {err}") from None
    for key, value in read_metadata(onnx_path).items():
        model.set_rt_info(value, ["tpn", key])
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return [xml, xml.with_suffix(".bin")]


# ----------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.int8",
        description=(
            "Quantize an FP32 ONNX export to INT8 for CPUs: <name>.int8.onnx (QDQ; runs in ONNX Runtime and "
            "OpenVINO, and is what TensorRT's explicit quantization takes), calibrated on test-protocol views of "
            "--calib-shards, the layers quantization hurts most kept in float until held-out clips agree with "
            "FP32. Writes <name>.int8.json beside it. Gate the result with export.validate."
        ),
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("onnx", type=Path, help="the FP32 ONNX file (python -m export.onnx NAME --size test)")
    p.add_argument("--calib-shards", required=True, help="shard folder (or URL) whose videos calibrate the scales")
    p.add_argument("--calib-split", default="train", help="split of --calib-shards (default %(default)s)")
    p.add_argument("--calib-clips", type=positive_int, default=DEFAULT_CLIPS, help="clips (default %(default)s)")
    p.add_argument("--out", type=Path, help="the INT8 ONNX to write (default: <name>.int8.onnx beside it)")
    p.add_argument(
        "--quantizer",
        choices=QUANTIZERS,
        default=DEFAULT_QUANTIZER,
        help="auto (default: nncf where installed, else onnxruntime), nncf (the [cpu] extra) or onnxruntime "
        "(ONNX Runtime's quantize_static); see README",
    )
    p.add_argument(
        "--backend",
        choices=runtime.BACKENDS,
        default="auto",
        help="runtime that judges the held-out clips (default: what export.runtime picks for the file)",
    )
    p.add_argument("--max-tries", type=positive_int, default=MAX_TRIES, help="quantizations at most (default 5)")
    p.add_argument("--ir", action="store_true", help="also OpenVINO's IR of the INT8 model (<name>.int8.xml/.bin)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        model = check_source(args.onnx)
        ready_quantizer(args.quantizer)
        if args.ir:
            import_openvino()
        split = validation_split(args.calib_shards, args.calib_split)
        calibration = calibrate(model, args.calib_shards, split, args.calib_clips)
        for note in calibration.notes:
            print(f"WARNING: {note}", file=sys.stderr)
        report = to_int8(args.onnx, calibration, out=args.out, quantizer=args.quantizer, backend=args.backend,
                         max_tries=args.max_tries, ir=args.ir, log=print)  # fmt: skip
    except CheckFailed as e:
        write_json(_report_path(Path(e.report.path)), {"int8": e.report, "passed": False})
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    write_json(_report_path(Path(report.path)), {"int8": asdict(report), "passed": True})
    print(report.summary())
    return EXIT_OK


def _report_path(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".onnx") + ".json")


if __name__ == "__main__":
    sys.exit(main())
