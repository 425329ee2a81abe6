"""The Top-1 gate: an exported artifact is trusted only if it classifies like the PyTorch model.

With validation shards, the artifact (ONNX Runtime on CPU or CUDA, or a
TensorRT engine, through `export.runtime`) and the PyTorch FP32 model see
the same test-protocol views (`pipeline.ClipLoader` in test mode with the
model's ClipSpec); each video's score is its views' mean softmax, as in
`tpn.metrics`. The gate fails when

  (a) the artifact's Top-1 is more than `max_drop` points below PyTorch's
      on those videos, or
  (b) the weights are the zoo's and the artifact's Top-1 is more than
      `max_drop` points below the zoo's published Top-1.

"The weights are the zoo's" means the checkpoint file's sha256 equals the
`weights_sha256` recorded in the zoo config (`zoo_checkpoint=None`, the
default); `zoo_checkpoint=True` forces check (b) (e.g. for a converted
copy of the published weights), `False` skips it. The published numbers
are for the full validation set: on a subset, (b) measures sampling noise
as well.

Only a passing gate with shards writes `<artifact>.validated.json` (with
the artifact's sha256); a failing one removes any earlier marker.

Without shards the gate compares per-clip logits on seeded synthetic clips
under the artifact's dtype tolerance, and the report says that no accuracy
was validated.

    python -m export.validate exports/tpn_r50_f8s8/tpn_r50_f8s8.fp16.engine --model tpn_r50_f8s8 \\
        --checkpoint ckpt.pth --val-shards shards/k400/ --split val
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export import runtime
from export.common import (
    EXIT_CODES_HELP,
    EXIT_FAILED,
    EXIT_OK,
    FP16,
    FP32,
    Agreement,
    AgreementMeter,
    ExportError,
    ModelSource,
    Tolerance,
    file_sha256,
    load_model,
    synthetic_clips,
    validated_marker,
    write_json,
)
from tpn.metrics import accuracy, average_views

NO_ACCURACY = (
    "no accuracy was validated: only per-clip logit agreement with PyTorch on {n} synthetic clips; "
    "pass validation shards (--val-shards DIR) to check Top-1"
)


@dataclass
class GateReport:
    artifact: str
    model: str
    source: ModelSource
    backend: str
    precision: str
    mode: str  # "shards" or "synthetic"
    accuracy_validated: bool
    max_drop: float
    agreement: Agreement | None = None  # per-clip logits vs PyTorch
    videos: int = 0
    views_per_video: int = 0
    artifact_top1: float | None = None
    torch_top1: float | None = None
    drop: float | None = None  # points below PyTorch
    points_per_video: float | None = None  # how much one video moves Top-1
    prediction_agreement: float | None = None  # videos where both pick the same class
    zoo_top1: float | None = None
    zoo_checked: bool = False
    zoo_drop: float | None = None
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    marker: str | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        if self.mode == "synthetic":
            return f"gate {verdict} on synthetic clips ({self.agreement.summary()}); {self.notes[0]}"
        text = (
            f"gate {verdict}: Top-1 {self.artifact_top1:.2f}% ({self.backend}, {self.precision}) vs "
            f"PyTorch FP32 {self.torch_top1:.2f}% on {self.videos} videos x {self.views_per_video} views: "
            f"drop {self.drop:+.2f} points (max {self.max_drop})"
        )
        if self.zoo_checked:
            text += f"; zoo Top-1 {self.zoo_top1:.2f}%, {self.zoo_drop:+.2f} points below"
        return text + "".join(f"\n  - {f}" for f in self.failures)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """The reference must be real FP32: no TF32 in convs and matmuls on the GPU."""
    conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm


def artifact_tolerance(runner: runtime.Runner) -> Tolerance:
    return FP16 if runner.precision == "fp16" else FP32


def artifact_metadata(artifact: str | os.PathLike) -> dict[str, str]:
    """What an ONNX file records about its origin (engines record nothing)."""
    if not str(artifact).endswith(".onnx"):
        return {}
    from export.onnx import read_metadata

    if not Path(artifact).is_file():
        raise ExportError(f"{artifact} does not exist")
    return read_metadata(artifact)


def check_artifact_model(meta: dict[str, str], artifact: str | os.PathLike, name: str) -> None:
    if meta.get("model") and meta["model"] != name:
        raise ExportError(f"{artifact} was exported from {meta['model']}, not {name}: pass --model {meta['model']}")


def check_artifact_weights(meta: dict[str, str], artifact: str | os.PathLike, source: ModelSource) -> None:
    sha = meta.get("checkpoint_sha256")
    if sha and source.checkpoint_sha256 and sha != source.checkpoint_sha256:
        raise ExportError(
            f"{artifact} was exported from other weights than {source.checkpoint} "
            f"(sha256 {sha[:12]}... vs {source.checkpoint_sha256[:12]}...): pass the checkpoint it was exported from"
        )


def check_view_size(runner: runtime.Runner, views: torch.Tensor, model_name: str) -> None:
    want, got = tuple(runner.input_shape[-2:]), tuple(views.shape[-2:])
    if want != got:
        raise ExportError(
            f"the artifact takes {want[0]}x{want[1]} clips but {model_name}'s test protocol gives "
            f"{got[0]}x{got[1]} views: export with --size test (the Top-1 gate needs the test-protocol size)"
        )


def is_validated(artifact: str | os.PathLike) -> bool:
    """True when a passing gate with shards vouched for exactly this file."""
    marker = validated_marker(artifact)
    if not marker.is_file() or not Path(artifact).is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("sha256") == file_sha256(artifact)
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------- the two gates


def synthetic_gate(runner: runtime.Runner, model: nn.Module, report: GateReport, *, clips: int, seed: int) -> None:
    clip = model.config.clip
    x = synthetic_clips(clips, tuple(runner.input_shape[1:]), mean=clip.mean, std=clip.std, seed=seed)
    meter = AgreementMeter(artifact_tolerance(runner))
    for i in range(0, clips, 4):
        xb = torch.from_numpy(x[i : i + 4])
        meter.add(_np(runner(xb)), _np(_torch_forward(model, xb)))
    report.agreement = meter.result()
    report.passed = report.agreement.passed
    if not report.passed:
        report.failures.append(f"logits disagree with PyTorch: {report.agreement.summary()}")
    report.notes.insert(0, NO_ACCURACY.format(n=clips))


def shard_gate(
    runner: runtime.Runner,
    model: nn.Module,
    report: GateReport,
    *,
    val_shards: str | os.PathLike,
    split: str | None,
    batch_size: int,
    max_videos: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run both over the shards; returns (artifact scores, PyTorch scores, labels), one row per video."""
    clip = model.config.clip
    views = clip.num_test_views
    meter = AgreementMeter(artifact_tolerance(runner))
    art, ref, labels = [], [], []
    for clips, y in view_batches(val_shards, clip, split=split, batch_size=batch_size):
        x = clips.flatten(0, 1)  # (N * V, 3, T, H, W), video by video
        check_view_size(runner, x, model.config.name)
        a, r = runner(x).float().cpu(), _torch_forward(model, x).cpu()
        meter.add(a.numpy(), r.numpy())
        art.append(average_views(a, views))
        ref.append(average_views(r, views))
        labels.append(y.cpu())
        if max_videos and sum(len(t) for t in labels) >= max_videos:
            break
    if not labels:
        raise ExportError(f"no videos in {val_shards}" + (f" (split {split!r})" if split else ""))
    report.agreement, report.views_per_video = meter.result(), views
    cut = max_videos or None
    return torch.cat(art)[:cut], torch.cat(ref)[:cut], torch.cat(labels)[:cut]


def view_batches(val_shards: str | os.PathLike, clip, *, split: str | None, batch_size: int) -> Iterator:
    """ClipLoader test-mode batches, with the loader's data errors turned into gate errors."""
    from pipeline import ClipLoader
    from pipeline.loader import DataError
    from pipeline.shardset import ShardError

    try:
        yield from ClipLoader(val_shards, clip, mode="test", batch_size=batch_size, split=split)
    except (ShardError, DataError, FileNotFoundError) as e:
        raise ExportError(f"cannot read validation shards {val_shards}: {e}") from None


def judge_shards(
    report: GateReport, art: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, zoo_top1: float | None
) -> None:
    """Fill in Top-1s and the verdict from per-video scores (pure: no models involved)."""
    report.videos = len(labels)
    report.artifact_top1 = accuracy(art, labels)["top1"]
    report.torch_top1 = accuracy(ref, labels)["top1"]
    report.drop = round(report.torch_top1 - report.artifact_top1, 6)
    report.points_per_video = 100.0 / report.videos
    report.prediction_agreement = float((art.argmax(1) == ref.argmax(1)).float().mean())
    if report.drop > report.max_drop:
        report.failures.append(
            f"Top-1 drops {report.drop:.2f} points below PyTorch FP32 (max {report.max_drop})"
        )
    if zoo_top1 is not None:
        report.zoo_checked, report.zoo_top1 = True, zoo_top1
        report.zoo_drop = round(zoo_top1 - report.artifact_top1, 6)
        if report.zoo_drop > report.max_drop:
            report.failures.append(
                f"Top-1 {report.artifact_top1:.2f}% is {report.zoo_drop:.2f} points below the zoo's "
                f"{zoo_top1:.2f}% (max {report.max_drop})"
            )
    if report.points_per_video > report.max_drop:
        report.notes.append(
            f"one video is {report.points_per_video:.2f} points: with {report.videos} videos a single "
            "changed prediction exceeds max_drop"
        )
    report.passed = not report.failures


def zoo_target(
    model: nn.Module, source: ModelSource, zoo_checkpoint: bool | None, report: GateReport
) -> float | None:
    """The zoo Top-1 to hold the artifact to, or None when the weights are not the zoo's."""
    cfg = model.config
    if zoo_checkpoint is False:
        return None
    if zoo_checkpoint is None and not source.zoo_weights:
        why = "no checkpoint" if source.checkpoint is None else "the checkpoint's sha256 is not the zoo's"
        if cfg.weights_sha256 is None:
            why = f"the zoo records no weights sha256 for {cfg.name}"
        report.notes.append(f"zoo Top-1 not checked: {why} (zoo_checkpoint=True forces it)")
        return None
    if cfg.top1 is None:
        raise ExportError(f"{cfg.name} has no published Top-1 to check against")
    return cfg.top1


# ----------------------------------------------------------------- entry point


def validate(
    artifact: str | os.PathLike,
    *,
    model_name: str | nn.Module,
    checkpoint: str | os.PathLike | None = None,
    val_shards: str | os.PathLike | None = None,
    max_drop: float = 0.3,
    backend: runtime.Backend = "auto",
    zoo_checkpoint: bool | None = None,
    split: str | None = None,
    batch_size: int = 4,
    max_videos: int | None = None,
    synthetic: int = 8,
    seed: int = 0,
) -> GateReport:
    """Gate `artifact` against the PyTorch model `model_name` (+ `checkpoint`); see the module docstring.

    `model_name` may also be a zoo model already holding the weights (from
    `tpn.create_model`), as the export pipeline passes it.

    Returns the report (`passed` says the verdict); raises ExportError for
    unusable inputs (unknown model, wrong checkpoint, missing shards, an
    artifact of another model or input size).
    """
    t0 = time.perf_counter()
    if isinstance(model_name, str) and checkpoint is None:
        raise ExportError(
            f"the gate needs the weights {artifact} was exported from (--checkpoint): a fresh {model_name} "
            "has random weights that no exported artifact matches"
        )
    meta = artifact_metadata(artifact)
    check_artifact_model(meta, artifact, model_name if isinstance(model_name, str) else model_name.config.name)
    model, source = load_model(model_name, checkpoint)
    check_artifact_weights(meta, artifact, source)
    runner = runtime.load(artifact, backend=backend)
    device = runner.device if runner.device.type == "cuda" else torch.device("cpu")
    model = model.to(device)
    report = GateReport(
        artifact=str(artifact), model=source.name, source=source, backend=runner.backend,
        precision=runner.precision, mode="shards" if val_shards else "synthetic",
        accuracy_validated=False, max_drop=max_drop,
    )  # fmt: skip
    with strict_fp32():
        if val_shards is None:
            synthetic_gate(runner, model, report, clips=synthetic, seed=seed)
        else:
            target = zoo_target(model, source, zoo_checkpoint, report)
            scores = shard_gate(
                runner, model, report, val_shards=val_shards, split=split, batch_size=batch_size,
                max_videos=max_videos,
            )  # fmt: skip
            judge_shards(report, *scores, zoo_top1=target)
            report.accuracy_validated = report.passed
    report.seconds = round(time.perf_counter() - t0, 2)
    mark(report)
    return report


def mark(report: GateReport) -> None:
    """Write `<artifact>.validated.json` on a passing gate with shards; remove it on a failing one."""
    marker = validated_marker(report.artifact)
    if report.mode == "shards" and report.passed:
        report.marker = str(marker)
        write_json({"sha256": file_sha256(report.artifact), "gate": report}, marker)
    elif not report.passed:
        marker.unlink(missing_ok=True)


def _torch_forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(x.to(device).float()).float()


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# ----------------------------------------------------------------- CLI


def add_gate_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared with `export.trt`."""
    p.add_argument("--val-shards", help="validation shards: run the Top-1 gate on them (test protocol)")
    p.add_argument("--split", help="use only <split>-*.tar in --val-shards (e.g. val; default: every shard)")
    p.add_argument(
        "--max-drop", type=float, default=0.3,
        help="largest Top-1 drop allowed, in points, vs PyTorch FP32 and vs the zoo's Top-1 (default %(default)s)",
    )  # fmt: skip
    p.add_argument("--max-videos", type=int, help="stop after this many videos (quick checks; default: all)")
    p.add_argument("--batch-size", type=int, default=4, help="videos per batch in the gate (default %(default)s)")
    zoo = p.add_mutually_exclusive_group()
    zoo.add_argument(
        "--zoo-checkpoint", dest="zoo_checkpoint", action="store_true", default=None,
        help="hold the artifact to the zoo's Top-1 even though the checkpoint's sha256 is not recorded",
    )  # fmt: skip
    zoo.add_argument(
        "--no-zoo-check", dest="zoo_checkpoint", action="store_false",
        help="do not compare with the zoo's Top-1 (default: only when the checkpoint is the zoo's by sha256)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.validate",
        description=(
            "Top-1 gate of an exported artifact (.onnx or TensorRT .engine) against the PyTorch model. "
            "With --val-shards it compares Top-1 on the test protocol and writes <artifact>.validated.json "
            "only on a pass; without, it compares logits on synthetic clips and validates no accuracy. "
            "Writes <artifact>.gate.json."
        ),
        epilog=EXIT_CODES_HELP,
    )
    p.add_argument("artifact", help="the .onnx file or .engine to check")
    p.add_argument("--model", required=True, help="zoo model name the artifact was exported from")
    p.add_argument("--checkpoint", required=True, help="the weights the artifact was exported from")
    p.add_argument(
        "--backend", choices=["auto", "ort-cpu", "ort-cuda", "trt"], default="auto",
        help="runtime: auto picks TensorRT for engines, ONNX Runtime CUDA or CPU for .onnx (default %(default)s)",
    )  # fmt: skip
    add_gate_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = validate(
            args.artifact, model_name=args.model, checkpoint=args.checkpoint, val_shards=args.val_shards,
            max_drop=args.max_drop, backend=args.backend, zoo_checkpoint=args.zoo_checkpoint, split=args.split,
            batch_size=args.batch_size, max_videos=args.max_videos,
        )  # fmt: skip
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    out = Path(str(args.artifact) + ".gate.json")
    write_json({"settings": vars(args), "gate": report}, out)
    print(report.summary())
    print(f"report: {out}")
    return EXIT_OK if report.passed else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
