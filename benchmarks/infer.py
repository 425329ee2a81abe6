"""Inference speed of exported models: PyTorch FP32 / BF16, ONNX Runtime (CPU, CUDA FP32 / FP16), TensorRT FP16.

    python -m benchmarks.infer            # tiny model at 1/8/32 + tpn_r50_f8s8 at 1/8 (1/8/32 on a GPU)
    python -m benchmarks.infer --full     # tpn_r50_f8s8 at 32 on CPU too, and BF16 on CPUs without native BF16
    python -m benchmarks.infer --tiny     # CI smoke run: the tiny model at batch 1 and 8, two rounds
    python -m benchmarks.infer --models tpn_r50_f8s8 --checkpoint best.pth --val-shards shards/  # + agreement

For every (model, batch) the backends run in interleaved rounds (one call
of each per round, after warm-up), so a busy machine slows them alike; the
median over rounds is reported, with clips/s and the ratio to PyTorch FP32
eager. PyTorch and ONNX Runtime get the same number of CPU threads
(`--threads`, default all cores). Each backend's logits are compared with
PyTorch FP32 on the timed clips, so a fast wrong backend cannot hide.

Fairness control on a CPU: at batch 1 PyTorch and ONNX Runtime also run on
one thread each. Multi-threaded PyTorch slower than single-threaded means
the cores were not free (other load, or threads fighting): the CPU ratios of
that model are then marked unreliable, and so is any goal judged on them.

Backends: PyTorch FP32 eager; PyTorch BF16 autocast (CPU too); ONNX Runtime
through `export.runtime`: on a CPU the FP32 ONNX at each graph-optimisation
level at batch 1 (the default level at other batches); on a GPU with
onnxruntime-gpu (`pip install -e ".[gpu]"`) the CUDA provider with the FP32
ONNX (TF32 as PyTorch's FP32 convolutions) and the mixed-precision FP16 ONNX
from `export.fp16`, torch tensors bound in place; TensorRT FP16 where
TensorRT and a GPU are present (one engine, profile 1..max batch, opt 8).

CPU deployment (with the `[cpu]` extra; `--no-cpu-deploy` skips it): the
FP32 ONNX in OpenVINO at FP32 inference precision (`ov-fp32`) and, on CPUs
with native BF16, at BF16 (`ov-bf16`); and the model quantized to INT8 by
each quantizer of `export.int8` (one post-training pass, no layer kept in
float: the speed of plain PTQ) in ONNX Runtime and OpenVINO:
`ort-int8 (nncf)` / `ov-int8 (nncf)` (NNCF, the default where installed)
and `ort-int8 (ortq)` / `ov-int8 (ortq)` (ONNX Runtime's quantize_static).
Calibration: 32 synthetic clips, or with `--calib-shards` one test view of
each of up to 64 videos of its train split. Goal: the best INT8 row >= 4x ONNX Runtime FP32 at batch 1
(tpn_r50_f8s8, same threads).

With `--val-shards`, every backend also classifies the test-protocol views
of up to `--val-videos` validation videos (centre-cropped to the exported
size), and its top-1 agreement with PyTorch FP32 is reported per view and
per video. That needs trained weights (`--checkpoint`): on random weights
the logits are near ties and agreement says little.

Goals: ONNX Runtime CPU >= 1.2x PyTorch CPU eager at batch 1; the best CPU INT8 >= 4x ONNX Runtime FP32
at batch 1; ORT-CUDA FP16
>= 3x PyTorch FP32 eager at batch 32 and FP16 top-1 agreement >= 99.5% on
validation clips (tpn_r50_f8s8, on a GPU); TensorRT FP16 >= 5x. Writes
benchmarks/results/infer.json and infer.png.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

import tpn
from pipeline.cli import add_split_arg
from tpn.cli import add_checkpoint_arg
from benchmarks.common import cpu_has_native_bf16, results_path, save_figure, write_results
from export import runtime
from export.errors import ExportError
from export.source import load_model, synthetic_clips

ORT_LEVELS = ("all", "extended", "basic", "disable")
BASELINE = "torch-fp32"
ONE_THREAD = " (1 thread)"
ORT_CPU_ON_GPU_NOTE = (
    "onnxruntime has no CUDA provider here (install onnxruntime-gpu for it: pip install -e '.[gpu]'): ONNX "
    "Runtime runs on the CPU at batch 1 only, for reference, against PyTorch on the GPU"
)
GOALS = {  # backend: (device, batch or None for the best, minimum speed-up over PyTorch FP32 eager)
    "ort-cpu": ("cpu", 1, 1.2),
    "ort-cuda-fp16": ("cuda", 32, 3.0),
    "trt-fp16": ("cuda", None, 5.0),
}
AGREEMENT_GOAL = ("ort-cuda-fp16", 0.995)  # video-level top-1 agreement with PyTorch FP32 on validation clips
INT8_GOAL = ("tpn_r50_f8s8", 1, 4.0)  # (model, batch, best INT8 row over ONNX Runtime FP32 on the CPU)
INT8_FILES = {"int8-nncf": "nncf", "int8-ortq": "onnxruntime"}  # artifact key -> export.int8 quantizer
CALIB_CLIPS = 32


# ----------------------------------------------------------------- pure helpers


def summarize(seconds: list[float], batch: int) -> dict:
    """Median and p90 latency (ms) and clips/s of one backend at one batch size."""
    med = statistics.median(seconds)
    p90 = float(np.percentile(seconds, 90))
    return {"median_ms": 1e3 * med, "p90_ms": 1e3 * p90, "clips_per_s": batch / med, "rounds": len(seconds)}


def add_ratios(rows: list[dict], baseline: str = BASELINE) -> list[dict]:
    """ratio = clips/s over the baseline's at the same model and batch (None without a baseline)."""
    base = {(r["model"], r["batch"]): r["clips_per_s"] for r in rows if r["backend"] == baseline}
    for r in rows:
        b = base.get((r["model"], r["batch"]))
        r["ratio_vs_" + baseline.replace("-", "_")] = r["clips_per_s"] / b if b else None
    return rows


def unreliable_models(rows: list[dict]) -> dict[str, str]:
    """model -> why its CPU ratios cannot be trusted: PyTorch on N threads slower than on one."""
    out = {}
    for r in rows:
        one = next(
            (
                c
                for c in rows
                if c["model"] == r["model"] and c["batch"] == r["batch"] and c["backend"] == BASELINE + ONE_THREAD
            ),
            None,
        )
        if r["backend"] == BASELINE and r["device"] == "cpu" and one and r["median_ms"] > one["median_ms"]:
            out[r["model"]] = (
                f"{r['model']}: PyTorch on {r['threads']} threads took {r['median_ms']:.0f} ms, more than on 1 thread "
                f"({one['median_ms']:.0f} ms): the cores were not free, so its CPU ratios are not trustworthy"
            )
    return out


def goal_lines(rows: list[dict], device: str) -> list[str]:
    """The speed goals, judged on the default backends (what `export.runtime.load` gives)."""
    key = "ratio_vs_" + BASELINE.replace("-", "_")
    shaky = unreliable_models(rows)
    lines = []
    for backend, (dev, batch, target) in GOALS.items():
        hits = [
            r
            for r in rows
            if r["backend"] == backend
            and r[key]
            and (batch is None or r["batch"] == batch)
            and not r.get("tiny")
            and dev == device
        ]
        where = f"at batch {batch}" if batch else "best batch"
        if not hits:
            lines.append(f"{backend} >= {target}x PyTorch FP32 eager ({where}): not measured on this machine")
            continue
        best = max(hits, key=lambda r: r[key])
        verdict = "met" if best[key] >= target else "NOT met"
        if best["model"] in shaky:
            verdict = f"UNRELIABLE ({verdict} in this run; see the fairness note)"
        lines.append(
            f"{backend} >= {target}x PyTorch FP32 eager ({where}, {best['model']}): {best[key]:.2f}x "
            f"at batch {best['batch']} -> {verdict}"
        )
    return lines + [agreement_goal_line(rows, device)] + ([int8_goal_line(rows)] if device == "cpu" else [])


def int8_goal_line(rows: list[dict]) -> str:
    """The best INT8 row against ONNX Runtime FP32, same model, batch and threads."""
    model, batch, target = INT8_GOAL
    at = [r for r in rows if r["model"] == model and r["batch"] == batch and r["device"] == "cpu"]
    base = next((r for r in at if r["backend"] == "ort-cpu"), None)
    int8 = [r for r in at if "int8" in r["backend"] and not r["backend"].endswith(ONE_THREAD)]
    head = f"best INT8 >= {target}x ONNX Runtime FP32 ({model}, batch {batch})"
    if base is None or not int8:
        return f"{head}: not measured on this machine"
    best = max(int8, key=lambda r: r["clips_per_s"])
    ratio = best["clips_per_s"] / base["clips_per_s"]
    verdict = "met" if ratio >= target else "NOT met"
    if model in unreliable_models(rows):
        verdict = f"UNRELIABLE ({verdict} in this run; see the fairness note)"
    return f"{head}: {best['backend']} {ratio:.2f}x -> {verdict}"


def agreement_goal_line(rows: list[dict], device: str) -> str:
    backend, target = AGREEMENT_GOAL
    hits = [
        r
        for r in rows
        if r["backend"] == backend
        and r.get("val_video_agreement") is not None
        and not r.get("tiny")
        and device == "cuda"
    ]
    head = f"{backend} top-1 agreement with PyTorch FP32 >= {100 * target:g}% on validation clips"
    if not hits:
        return f"{head}: not measured on this machine"
    r = hits[0]
    verdict = "met" if r["val_video_agreement"] >= target else "NOT met"
    if r.get("weights") == "random":
        verdict += ", but on random weights, which says little"
    return f"{head} ({r['model']}): {100 * r['val_video_agreement']:.2f}% of {r['val_videos']} videos -> {verdict}"


# ----------------------------------------------------------------- timing


def interleaved(
    fns: dict[str, Callable[[], object]], *, rounds: int, warmup: int, sync: bool
) -> dict[str, list[float]]:
    """Seconds per call of each function, one call of each per round."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if sync:
                torch.cuda.synchronize()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    return times


def torch_fn(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> Callable[[], torch.Tensor]:
    # FP32 enters no autocast context at all: even a disabled one costs measurable time per call.
    amp = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def run() -> torch.Tensor:
        with torch.inference_mode(), amp():
            return model(x)

    return run


@contextlib.contextmanager
def torch_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------- backends of one model


def build_artifacts(
    model: torch.nn.Module,
    source,
    work: Path,
    *,
    want_fp16: bool,
    want_trt: bool,
    max_batch: int,
    calibration=None,
    int8_clips: np.ndarray | None = None,
) -> dict[str, str]:
    """FP32 ONNX always; FP16 ONNX for ORT-CUDA or TensorRT; an engine when TensorRT can build one here; the
    INT8 files of both quantizers when `int8_clips` are given."""
    from export.onnx import export_onnx

    arts = {"onnx": export_onnx(model, source=source, out_dir=work, parity_batches=(1,)).path}
    if int8_clips is not None:
        from export.int8 import quantize

        for key, quantizer in INT8_FILES.items():
            arts[key] = str(quantize(arts["onnx"], int8_clips, work / f"{key}.onnx", quantizer=quantizer))
    if want_fp16 or want_trt:
        from export.fp16 import to_fp16

        arts["fp16"] = to_fp16(arts["onnx"], calibration=calibration).path
    if want_trt:
        from export.engine import build_engine

        arts["engine"] = build_engine(arts["fp16"], max_batch=max_batch, opt_batch=min(8, max_batch)).path
    return arts


def runners_for(arts: dict[str, str], device: str, batch: int, *, threads: int, gpu_ort: bool) -> dict[str, Callable]:
    """name -> runner(x) of every exported backend that runs here at this batch."""
    run: dict[str, Callable] = {}
    if device == "cuda":
        if gpu_ort:
            tf32 = torch.backends.cudnn.allow_tf32  # as PyTorch's FP32 eager convolutions
            run["ort-cuda-fp32"] = runtime.load(arts["onnx"], backend="ort-cuda", tf32=tf32)
            run["ort-cuda-fp16"] = runtime.load(arts["fp16"], backend="ort-cuda")
        elif batch == 1:  # see ORT_CPU_ON_GPU_NOTE
            run["ort-cpu"] = runtime.load(arts["onnx"], backend="ort-cpu", threads=threads)
        if "engine" in arts:
            run["trt-fp16"] = runtime.load(arts["engine"])
        return run
    for level in ORT_LEVELS if batch == 1 else ("all",):
        label = "ort-cpu" if level == "all" else f"ort-cpu ({level})"
        run[label] = runtime.load(arts["onnx"], backend="ort-cpu", threads=threads, level=level)
    if "int8-nncf" in arts:  # the CPU deployment rows (see the module docstring)
        run["ov-fp32"] = runtime.load(arts["onnx"], backend="openvino", threads=threads)
        if cpu_has_native_bf16():
            run["ov-bf16"] = runtime.load(arts["onnx"], backend="openvino", threads=threads, openvino_precision="bf16")
        for key in INT8_FILES:
            tag = key.removeprefix("int8-")
            run[f"ort-int8 ({tag})"] = runtime.load(arts[key], backend="ort-cpu", threads=threads)
            run[f"ov-int8 ({tag})"] = runtime.load(arts[key], backend="openvino", threads=threads)
    return run


def inference_precisions(runners: dict[str, Callable]) -> dict[str, str]:
    """backend row -> the precision its runtime reported running in (OpenVINO's may differ from the hint)."""
    return {name: r.precision for name, r in runners.items() if hasattr(r, "precision")}


def int8_calibration(cfg, calib_shards: str | None) -> np.ndarray:
    """Clips to calibrate the benchmark's INT8 files on: synthetic, or one test view per video of up to 64
    videos of `calib_shards`' train split."""
    if calib_shards is None:
        return synthetic_clips(CALIB_CLIPS, cfg.input_shape, mean=cfg.clip.mean, std=cfg.clip.std, seed=99)
    from export.int8 import calibration_clips

    return calibration_clips(cfg.name, tuple(cfg.input_shape[-2:]), calib_shards, "train", 64).clips


def cpu_deploy_available() -> bool:
    import importlib.util

    return runtime.openvino_installed() and importlib.util.find_spec("nncf") is not None


def backends_for(
    model: torch.nn.Module,
    arts: dict[str, str],
    x: torch.Tensor,
    batch: int,
    *,
    bf16: bool,
    threads: int,
    gpu_ort: bool,
) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, str]]:
    """name -> a call on `x`, and name -> the precision each exported backend reported."""
    fns = {BASELINE: torch_fn(model, x, bf16=False)}
    if bf16:
        fns["torch-bf16"] = torch_fn(model, x, bf16=True)
    runners = runners_for(arts, x.device.type, batch, threads=threads, gpu_ort=gpu_ort)
    for name, r in runners.items():
        fns[name] = lambda r=r: r(x)
    return fns, inference_precisions(runners)


def agreement(outs: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Max |logit difference| and Top-1 agreement of each backend with PyTorch FP32 on the timed clips."""
    ref = outs[BASELINE].float().cpu()
    res = {}
    for name, y in outs.items():
        y = y.float().cpu()
        res[name] = {
            "max_abs_diff": float((y - ref).abs().max()),
            "top1_agreement": float((y.argmax(1) == ref.argmax(1)).float().mean()),
        }
    return res


def single_thread_control(model, arts, x: torch.Tensor, *, rounds: int, warmup: int) -> dict[str, list[float]]:
    """PyTorch and ONNX Runtime on one thread each, interleaved: the yardstick of the fairness check."""
    ort1 = runtime.load(arts["onnx"], backend="ort-cpu", threads=1)
    with torch_threads(1):
        fns = {BASELINE + ONE_THREAD: torch_fn(model, x, bf16=False), "ort-cpu" + ONE_THREAD: lambda: ort1(x)}
        return interleaved(fns, rounds=rounds, warmup=warmup, sync=False)


# ----------------------------------------------------------------- agreement on validation clips


def val_batches(val_shards: str, clip, split: str | None, videos: int, hw: tuple[int, int]):
    """(n * V, 3, T, h, w) test-protocol views of up to `videos` videos, batch by batch, centre-cropped to `hw`."""
    from pipeline import ClipLoader

    seen = 0
    for clips, _ in ClipLoader(val_shards, clip, mode="test", batch_size=4, split=split):
        clips = clips[: videos - seen]
        h, w = clips.shape[-2:]
        top, left = (h - hw[0]) // 2, (w - hw[1]) // 2
        yield clips[..., top : top + hw[0], left : left + hw[1]].flatten(0, 1)
        seen += len(clips)
        if seen >= videos:
            return


def val_agreement(
    model, arts, batches, per_video: int, *, device, threads: int, gpu_ort: bool, bf16: bool, chunk: int = 32
) -> dict[str, dict]:
    """Per-view and per-video top-1 agreement of each backend with PyTorch FP32 on validation views."""
    from tpn.metrics import average_views

    fns = {BASELINE: lambda x: torch_fn(model, x, False)()}
    if bf16:
        fns["torch-bf16"] = lambda x: torch_fn(model, x, True)()
    fns.update(runners_for(arts, device.type, chunk, threads=threads, gpu_ort=gpu_ort))
    views = {k: [] for k in fns}  # per-view predicted classes
    videos = {k: [] for k in fns}  # per-video predicted classes
    for x in batches:
        for name, fn in fns.items():
            y = torch.cat([fn(x[i : i + chunk].to(device)).float().cpu() for i in range(0, len(x), chunk)])
            views[name].append(y.argmax(1))
            videos[name].append(average_views(y, per_video).argmax(1))
    ref_view, ref_video = torch.cat(views[BASELINE]), torch.cat(videos[BASELINE])
    return {
        name: {
            "val_view_agreement": float((torch.cat(views[name]) == ref_view).float().mean()),
            "val_video_agreement": float((torch.cat(videos[name]) == ref_video).float().mean()),
            "val_videos": len(ref_video),
        }
        for name in fns
    }


# ----------------------------------------------------------------- one model


def bench_model(
    name: str,
    batches: list[int],
    *,
    rounds: int,
    warmup: int,
    bf16: bool,
    threads: int,
    log,
    checkpoint: str | None = None,
    val: dict | None = None,
    control: bool = True,
    cpu_deploy: bool = True,
    calib_shards: str | None = None,
) -> list[dict]:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model, source = load_model(name, checkpoint)
    if source.random_weights_warning():
        log(source.random_weights_warning())
    cfg = model.config
    gpu_ort = dev.type == "cuda" and "CUDAExecutionProvider" in runtime.ort_providers()
    want_trt = dev.type == "cuda" and _trt_usable()
    int8_clips = int8_calibration(cfg, calib_shards) if cpu_deploy and dev.type == "cpu" else None
    rows = []
    with tempfile.TemporaryDirectory(prefix="infer-bench-") as work:
        log(
            f"[{name}] exporting (ONNX{', FP16 ONNX' if gpu_ort or want_trt else ''}"
            f"{', TensorRT engine' if want_trt else ''}{', INT8 ONNX' if int8_clips is not None else ''}) ..."
        )
        # exported from the CPU copy (the exporter's parity check runs ONNX Runtime on the CPU)
        arts = build_artifacts(
            model,
            source,
            Path(work),
            want_fp16=gpu_ort,
            want_trt=want_trt,
            max_batch=max(batches),
            calibration=(val or {}).get("shards"),
            int8_clips=int8_clips,
        )
        model = model.to(dev)
        load_before = os.getloadavg()[0]
        for batch in batches:
            x = torch.from_numpy(
                synthetic_clips(batch, cfg.input_shape, mean=cfg.clip.mean, std=cfg.clip.std, seed=batch)
            ).to(dev)
            fns, precisions = backends_for(model, arts, x, batch, bf16=bf16, threads=threads, gpu_ort=gpu_ort)
            outs = {k: fn() for k, fn in fns.items()}
            agree = agreement(outs)
            times = interleaved(fns, rounds=rounds, warmup=warmup, sync=dev.type == "cuda")
            if control and dev.type == "cpu" and batch == 1 and threads > 1:
                times |= single_thread_control(model, arts, x, rounds=rounds, warmup=warmup)
            for backend, secs in times.items():
                rows.append(
                    {
                        "model": name,
                        "tiny": cfg.tiny,
                        "batch": batch,
                        "backend": backend,
                        "device": dev.type,
                        "threads": 1 if backend.endswith(ONE_THREAD) else threads,
                        "weights": source.weights,
                        **({"precision": precisions[backend]} if backend in precisions else {}),
                        **summarize(secs, batch),
                        **agree.get(backend, {}),
                    }
                )
            log(table([r for r in rows if r["model"] == name and r["batch"] == batch]))
        for r in rows:
            r["load_avg_1m"] = [load_before, os.getloadavg()[0]]
        if val:
            batches = val_batches(val["shards"], cfg.clip, val["split"], val["videos"], cfg.input_shape[-2:])
            res = val_agreement(
                model, arts, batches, cfg.clip.num_test_views, device=dev, threads=threads, gpu_ort=gpu_ort, bf16=bf16
            )
            for r in rows:
                r.update(res.get(r["backend"], {}))
            log(
                "agreement on validation clips: "
                + ", ".join(
                    f"{k} {100 * v['val_video_agreement']:.2f}% of videos "
                    f"({100 * v['val_view_agreement']:.2f}% of views)"
                    for k, v in res.items()
                    if k != BASELINE
                )
            )
    return rows


def _trt_usable() -> bool:
    from export.engine import missing_requirements

    return missing_requirements() is None


# ----------------------------------------------------------------- output


def table(rows: list[dict]) -> str:
    rows = add_ratios([dict(r) for r in rows])
    key = "ratio_vs_" + BASELINE.replace("-", "_")
    lines = [
        f"{'model':<16} {'batch':>5}  {'backend':<24} {'ran in':<6} {'median ms':>10} {'clips/s':>9} {'vs fp32':>8} "
        f"{'max|diff|':>10}"
    ]
    for r in rows:
        ratio = f"{r[key]:.2f}x" if r[key] else "-"
        diff = f"{r['max_abs_diff']:>10.2g}" if r.get("max_abs_diff") is not None else f"{'-':>10}"
        lines.append(
            f"{r['model']:<16} {r['batch']:>5}  {r['backend']:<24} {r.get('precision', '-'):<6} "
            f"{r['median_ms']:>10.1f} {r['clips_per_s']:>9.2f} {ratio:>8} {diff}"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> Path:
    """Clips/s per backend, one panel per model, batches side by side, each bar labelled with its ratio.

    One colour per backend across panels; log scale, as backends differ by 100x.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "ratio_vs_" + BASELINE.replace("-", "_")
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colour = {b: plt.get_cmap("tab10")(i % 10) for i, b in enumerate(backends)}
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(6.5 * len(models), 4.5), squeeze=False)
    for ax, name in zip(axes[0], models):
        sub = [r for r in rows if r["model"] == name]
        batches = sorted({r["batch"] for r in sub})
        for g, n in enumerate(batches):
            group = [r for b in backends for r in sub if r["backend"] == b and r["batch"] == n]
            width = 0.8 / len(group)
            for i, r in enumerate(group):
                x = g - 0.4 + (i + 0.5) * width
                ax.bar(x, r["clips_per_s"], width, color=colour[r["backend"]], label=r["backend"])
                if r.get(key):
                    ax.text(x, r["clips_per_s"], f"{r[key]:.1f}x", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(batches)), [f"batch {n}" for n in batches])
        ax.set_yscale("log")
        ax.set_ylabel("clips/s (ratio: vs PyTorch FP32 eager)")
        ax.set_title(name)
    handles = {lbl: h for ax in axes[0] for h, lbl in zip(*ax.get_legend_handles_labels())}
    fig.legend(handles.values(), handles.keys(), loc="lower center", ncol=min(6, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return save_figure(fig, path, dpi=110)


# ----------------------------------------------------------------- CLI


def plan(args: argparse.Namespace, gpu: bool) -> list[tuple[str, list[int]]]:
    """(model, batches) to run: the tiny model always; the full one at 1/8 on CPU (32 with --full or a GPU)."""
    if args.models:
        return [(m, args.batches or [1, 8, 32]) for m in args.models]
    runs = [(args.tiny_model, args.batches or ([1, 8] if args.tiny else [1, 8, 32]))]
    if not args.tiny:
        big = args.batches or ([1, 8, 32] if gpu or args.full else [1, 8])
        runs.append((args.model, big))
    return runs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.infer",
        description="Clips/s and latency of PyTorch FP32/BF16, ONNX Runtime (CPU; CUDA FP32 and FP16 with "
        "onnxruntime-gpu) and TensorRT FP16 on the same clips, same threads, interleaved rounds; writes "
        "benchmarks/results/infer.json and infer.png.",
    )
    p.add_argument("--model", default="tpn_r50_f8s8", help="full-size model (default %(default)s)")
    p.add_argument("--tiny-model", default="tpn_tiny_f8s4", help="tiny model (default %(default)s)")
    p.add_argument("--models", nargs="+", help="run exactly these models instead")
    p.add_argument(
        "--batches", type=int, nargs="+", help="batch sizes (default: 1 8 32; 1 8 for the full model on CPU)"
    )
    p.add_argument("--tiny", action="store_true", help="CI smoke run: the tiny model only, batches 1 and 8, 2 rounds")
    p.add_argument(
        "--full", action="store_true", help="batch 32 of the full model on CPU, and BF16 without native BF16"
    )
    p.add_argument(
        "--rounds",
        type=int,
        help="timed rounds per batch (default: GPU 20; CPU 5 tiny, 3 full-size; --tiny 2)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        help="untimed rounds first (default: GPU 3, CPU 2; the first "
        "multi-threaded CPU calls build kernels and thread pools)",
    )
    p.add_argument("--threads", type=int, help="CPU threads for PyTorch and ONNX Runtime alike (default: all cores)")
    p.add_argument("--no-control", action="store_true", help="skip the single-thread fairness control on a CPU")
    p.add_argument(
        "--no-cpu-deploy", action="store_true", help="skip the OpenVINO and INT8 rows on a CPU ([cpu] extra)"
    )
    p.add_argument(
        "--calib-shards", help="INT8 calibration: shard folder whose train split to take (default: synthetic)"
    )
    add_checkpoint_arg(p, what="weights for --models / the full model")
    p.add_argument("--val-shards", help="validation shards: also report each backend's top-1 agreement on them")
    add_split_arg(p, of="--val-shards")
    p.add_argument(
        "--val-videos", type=int, default=200, help="validation videos for the agreement (default %(default)s)"
    )
    p.add_argument("--name", default="infer", help="results name under benchmarks/results/ (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    gpu = torch.cuda.is_available()
    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    native_bf16 = gpu or cpu_has_native_bf16()
    notes = [ORT_CPU_ON_GPU_NOTE] if gpu and "CUDAExecutionProvider" not in runtime.ort_providers() else []
    notes += (
        []
        if native_bf16
        else [
            "this CPU has no native BF16 (AVX512-BF16/AMX): PyTorch emulates BF16 convolutions, measured ~15-30x "
            "slower than FP32 on tpn_r50_f8s8, so BF16 runs on the tiny model only (pass --full to include it)"
        ]
    )
    rows: list[dict] = []
    cpu_deploy = not gpu and not args.no_cpu_deploy and cpu_deploy_available()
    if not gpu and not args.no_cpu_deploy and not cpu_deploy:
        notes.append(f"no OpenVINO / INT8 rows: {runtime.CPU_EXTRA_HINT}")
    try:
        val = _val_settings(args)
        for name, batches in plan(args, gpu):
            tiny = tpn.get_config(name).tiny
            tiny_default = tiny and not args.models  # the smoke model: the deployment rows are for real ones
            default_rounds = 2 if args.tiny else (20 if gpu else (5 if tiny else 3))
            warmup = (3 if gpu else 2) if args.warmup is None else args.warmup  # 0 is a choice, not "unset"
            rows += bench_model(
                name,
                batches,
                rounds=args.rounds or default_rounds,
                warmup=warmup,
                bf16=native_bf16 or tiny or args.full,
                threads=threads,
                log=print,
                checkpoint=None if tiny and not args.models else args.checkpoint,
                val=None if tiny and not args.models else val,
                control=not args.no_control,
                cpu_deploy=cpu_deploy and not tiny_default,
                calib_shards=args.calib_shards,
            )
    except (ExportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    add_ratios(rows)
    goals = goal_lines(rows, "cuda" if gpu else "cpu")
    notes += list(unreliable_models(rows).values())
    print("\n" + table(rows) + "\n\n" + "\n".join(goals + notes))
    settings = {k: v for k, v in vars(args).items()} | {"threads": threads}
    path = write_results(args.name, {"settings": settings, "rows": rows, "goals": goals, "notes": notes})
    png = plot(rows, results_path(args.name, ".png"))
    print(f"results: {path}\nplot: {png}")
    return 0


def _val_settings(args: argparse.Namespace) -> dict | None:
    if not args.val_shards:
        return None
    from export.shards import validation_split

    return {
        "shards": args.val_shards,
        "split": validation_split(args.val_shards, args.split),
        "videos": args.val_videos,
    }


if __name__ == "__main__":
    sys.exit(main())
