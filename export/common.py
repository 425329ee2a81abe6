"""What every export step shares: the model being exported, tolerances, synthetic clips, reports.

Tolerances are named per dtype and compared the same way everywhere
(`compare_logits`): an exported artifact agrees with its reference when
every logit is within `atol + rtol * max|reference logit of that clip|` and
the predicted class is the same wherever the reference's margin between
its top class and the artifact's choice exceeds that bound (a margin
smaller than the tolerated error is a tie, not a disagreement).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import tpn
from pipeline.fileio import atomic_write_json, fsync_dir, sha256_file

# Exit codes shared by the export CLIs.
EXIT_OK = 0
EXIT_FAILED = 1  # a check failed: parity, FP16 tolerance or the Top-1 gate
EXIT_MISSING = 2  # a dependency is missing (TensorRT, a CUDA GPU, onnxruntime)
EXIT_BAD_INPUT = 3  # unknown model name, unreadable or mismatched checkpoint, missing file

EXIT_CODES_HELP = (
    "exit status: 0 success; 1 a check failed (parity, FP16 tolerance or the Top-1 gate); "
    "2 a dependency is missing (or a usage error); 3 bad input (unknown model name, "
    "checkpoint of another model, missing file)"
)


class ExportError(RuntimeError):
    """An export step that cannot go on; the message says what went wrong and what to do."""

    exit_code = EXIT_BAD_INPUT


class MissingDependencyError(ExportError):
    """An optional dependency (TensorRT, a CUDA GPU, ...) is not available here."""

    exit_code = EXIT_MISSING


class CheckFailed(ExportError):
    """An artifact was built but does not agree with its reference; `report` says by how much."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


# ----------------------------------------------------------------- tolerances


@dataclass(frozen=True)
class Tolerance:
    """How close an artifact's logits must stay to its reference's.

    rtol is relative to the clip's largest reference logit: reduced-precision
    error grows with the magnitude of the activations, not with each logit's
    own value, so a logit near zero gets the same slack as its neighbours.
    """

    name: str
    atol: float
    rtol: float
    min_top1_agreement: float = 1.0  # fraction of clips, ties within tolerance counted as agreeing

    def bound(self, ref: np.ndarray) -> np.ndarray:
        """(N,) allowed absolute error per clip for (N, K) reference logits."""
        return self.atol + self.rtol * np.abs(ref).max(axis=1)


# atol only matters when every logit of a clip is near zero (e.g. an untrained classifier);
# otherwise rtol times the clip's largest logit sets the bound.
# ONNX Runtime FP32 vs PyTorch FP32 differ by reordered sums only (~1e-6 at full size).
FP32 = Tolerance("fp32", atol=1e-5, rtol=1e-3)
# rtol as NVIDIA's FP16 recipe (polygraphy --rtol 1e-2), but relative to
# the clip's largest logit rather than to each logit, which makes it stricter on small logits.
FP16 = Tolerance("fp16", atol=1e-4, rtol=1e-2)
TOLERANCES = {t.name: t for t in (FP32, FP16)}


@dataclass
class Agreement:
    """Per-clip logit agreement of an artifact with its reference."""

    tolerance: str
    atol: float
    rtol: float
    clips: int
    max_abs_diff: float
    mean_abs_diff: float
    max_ref_abs: float
    worst_excess: float  # max over clips of (max |diff|) / (allowed error); <= 1 passes
    top1_agreement: float  # strict argmax agreement
    top1_agreement_tie_aware: float
    passed: bool

    def summary(self) -> str:
        verdict = "ok" if self.passed else "FAILED"
        return (
            f"{verdict} ({self.tolerance}: atol {self.atol:g}, rtol {self.rtol:g}): "
            f"max |diff| {self.max_abs_diff:.3g} over {self.clips} clips "
            f"(logits up to {self.max_ref_abs:.3g}; {self.worst_excess:.2f}x the allowed error), "
            f"Top-1 agreement {100 * self.top1_agreement:.1f}%"
        )


class AgreementMeter:
    """Accumulates `compare_logits` over batches without keeping every logit (gates over whole datasets)."""

    def __init__(self, tol: Tolerance) -> None:
        self.tol = tol
        self.clips = 0
        self.max_abs = self.sum_abs = self.max_ref = self.worst = 0.0
        self.values = 0
        self.strict = self.tie_aware = 0

    def add(self, out: np.ndarray, ref: np.ndarray) -> None:
        out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
        if out.shape != ref.shape or out.ndim != 2:
            raise ValueError(f"logit shapes differ or are not (N, K): {out.shape} vs {ref.shape}")
        diff = np.where(np.isfinite(out), np.abs(out - ref), np.inf)
        bound = self.tol.bound(ref)
        strict = out.argmax(1) == ref.argmax(1)
        # the reference's own margin between its top class and the artifact's pick
        picked = np.take_along_axis(ref, out.argmax(1)[:, None], axis=1)[:, 0]
        tie_aware = strict | (ref.max(axis=1) - picked <= 2 * bound)
        self.clips += out.shape[0]
        self.values += diff.size
        self.max_abs = max(self.max_abs, float(diff.max()))
        self.sum_abs += float(diff.sum())
        self.max_ref = max(self.max_ref, float(np.abs(ref).max()))
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero tolerance makes any difference infinite
            excess = np.where(diff.max(axis=1) > 0, diff.max(axis=1) / bound, 0.0)
        self.worst = max(self.worst, float(excess.max()))
        self.strict += int(strict.sum())
        self.tie_aware += int(tie_aware.sum())

    def result(self) -> Agreement:
        if self.clips == 0:
            raise ValueError("no clips were compared")
        agree = self.tie_aware / self.clips
        return Agreement(
            tolerance=self.tol.name,
            atol=self.tol.atol,
            rtol=self.tol.rtol,
            clips=self.clips,
            max_abs_diff=self.max_abs,
            mean_abs_diff=self.sum_abs / self.values,
            max_ref_abs=self.max_ref,
            worst_excess=self.worst,
            top1_agreement=self.strict / self.clips,
            top1_agreement_tie_aware=agree,
            passed=bool(self.worst <= 1.0 and agree >= self.tol.min_top1_agreement),
        )


def compare_logits(out: np.ndarray, ref: np.ndarray, tol: Tolerance) -> Agreement:
    """Compare (N, K) artifact logits with (N, K) reference logits under `tol`."""
    meter = AgreementMeter(tol)
    meter.add(out, ref)
    return meter.result()


# ----------------------------------------------------------------- the model


@dataclass
class ModelSource:
    """Which network and which weights an artifact was made from."""

    name: str
    num_classes: int
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    zoo_weights: bool = False  # the checkpoint's sha256 is the zoo entry's published one
    weights: str = "random"  # "random" (no checkpoint), "checkpoint", "zoo" or "module" (a caller's model)

    def random_weights_warning(self) -> str | None:
        """The line every export without a checkpoint starts with (None when there are real weights)."""
        return RANDOM_WEIGHTS.format(name=self.name) if self.weights == "random" else None


RANDOM_WEIGHTS = (
    "WARNING: random weights: no --checkpoint was given and the toolkit bundles no zoo weights, so {name} is "
    "exported with its random initial weights; the files run, but Top-1 gates and accuracy figures are "
    "meaningless for them (pass --checkpoint FILE)"
)


def _checkpoint_classes(checkpoint: str | Path | Mapping) -> int | None:
    """The class count an own-format checkpoint records (fine-tuned models differ from the zoo's)."""
    if isinstance(checkpoint, Mapping):
        obj = checkpoint
    else:
        from tpn.checkpoint import read_checkpoint

        obj = read_checkpoint(checkpoint)
    n = obj.get("num_classes") if obj.get("format") == "tpn-toolkit" else None
    return int(n) if n is not None else None


def load_model(name_or_model: str | nn.Module, checkpoint: str | Path | None = None) -> tuple[nn.Module, ModelSource]:
    """An eval-mode zoo model with its weights, and where they came from.

    Raises ExportError (with the zoo's close names, or the checkpoint
    loader's explanation) for unknown names and unusable checkpoints.
    """
    if isinstance(name_or_model, nn.Module):
        model = name_or_model
        if not isinstance(getattr(model, "config", None), tpn.ModelConfig):
            raise ExportError("the model has no zoo config: build it with tpn.create_model(name)")
        if checkpoint is not None:
            _load_weights(model, checkpoint)
    else:
        try:
            tpn.get_config(name_or_model)
        except ValueError as e:
            raise ExportError(str(e)) from None
        try:
            n = _checkpoint_classes(checkpoint) if checkpoint is not None else None
            model = tpn.create_model(name_or_model, num_classes=n)
        except tpn.CheckpointError as e:
            raise ExportError(f"cannot use checkpoint for {name_or_model}: {e}") from None
        if checkpoint is not None:
            _load_weights(model, checkpoint)
    source = _source(model, checkpoint)
    if isinstance(name_or_model, nn.Module) and checkpoint is None:
        source.weights = "module"  # whatever the caller's module holds: not ours to judge
    return model.eval(), source


def random_weights_notice(name: str, checkpoint: str | os.PathLike | None) -> str | None:
    """The first line of an export command run without weights (None with a checkpoint or an unknown name)."""
    if checkpoint is not None:
        return None
    try:
        tpn.get_config(name)
    except ValueError:
        return None  # the unknown name is the error to report
    return RANDOM_WEIGHTS.format(name=name)


def _load_weights(model: nn.Module, checkpoint: str | Path) -> None:
    try:
        tpn.load_checkpoint(model, checkpoint)
    except tpn.CheckpointError as e:
        raise ExportError(f"cannot load {checkpoint} into {model.config.name}: {e}") from None


def _source(model: nn.Module, checkpoint: str | Path | None) -> ModelSource:
    cfg = model.config
    src = ModelSource(name=cfg.name, num_classes=int(model.num_classes))
    if checkpoint is not None and not isinstance(checkpoint, Mapping):
        src.checkpoint = str(checkpoint)
        src.checkpoint_sha256 = sha256_file(checkpoint)
        src.zoo_weights = cfg.weights_sha256 is not None and src.checkpoint_sha256 == cfg.weights_sha256
        src.weights = "zoo" if src.zoo_weights else "checkpoint"
    elif checkpoint is not None:  # a state dict in memory
        src.weights = "checkpoint"
    return src


# ----------------------------------------------------------------- clip shapes and synthetic clips


def input_hw(cfg: tpn.ModelConfig, size: str | int | tuple[int, int]) -> tuple[int, int]:
    """Spatial size of the exported input: "train" (the training crop), "test" (the test crop) or explicit.

    "test" is what the test protocol feeds (and so what the Top-1 gate
    needs); "full" test views have no fixed width, so they need an
    explicit size.
    """
    clip = cfg.clip
    if size == "train":
        return clip.crop_size, clip.crop_size
    if size == "test":
        if clip.test_crops == "full":
            raise ExportError(
                f"{cfg.name} tests on full frames (test_crops='full'), whose width depends on the "
                f"video: pass an explicit size (H, W), e.g. ({clip.test_scale}, {clip.test_scale * 4 // 3})"
            )
        return clip.test_crop, clip.test_crop
    if isinstance(size, int):
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise ExportError(f"size must be 'train', 'test', an int or (H, W), got {size!r}")


def clip_shape(cfg: tpn.ModelConfig, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(3, T, H, W) of one exported clip."""
    return (3, cfg.clip.frames, hw[0], hw[1])


def synthetic_clips(
    n: int,
    shape: tuple[int, int, int, int],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int = 0,
) -> np.ndarray:
    """(n, 3, T, H, W) float32 normalised clips that look like video to a network.

    Smooth colour fields that drift over time plus a little pixel noise, in
    0-255 before normalisation: spatially correlated like real frames, so
    activations have realistic ranges (white noise would not).
    """
    c, t, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 255.0, size=(n, c, max(2, t // 2), max(2, h // 16), max(2, w // 16)))
    x = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(t, h, w), mode="trilinear")
    x = x + torch.from_numpy(rng.normal(0.0, 6.0, size=x.shape))
    x = x.clamp(0.0, 255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, c, 1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, c, 1, 1, 1)
    return ((x - m) / s).numpy().astype(np.float32)


def torch_logits(model: nn.Module, clips: np.ndarray, batch: int = 8) -> np.ndarray:
    """PyTorch FP32 reference logits, on CPU, a few clips at a time."""
    outs = []
    with torch.inference_mode():
        for i in range(0, len(clips), batch):
            outs.append(model(torch.from_numpy(clips[i : i + batch])).float().numpy())
    return np.concatenate(outs)


# ----------------------------------------------------------------- reports and files


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and numpy scalars as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_json(path, to_jsonable(obj))


def validated_marker(artifact: str | os.PathLike) -> Path:
    """`<artifact>.validated.json`: written only when the Top-1 gate passes on validation shards."""
    return Path(str(artifact) + ".validated.json")


def publish(files: list[Path], dest_dir: str | os.PathLike) -> Path:
    """Move staged files (dependencies first, the artifact last) into `dest_dir`; returns the artifact.

    A new artifact is not validated yet, so a stale `.validated.json`
    marker of an earlier file with the same name is removed first.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / files[-1].name
    validated_marker(final).unlink(missing_ok=True)
    for f in files:
        os.replace(f, dest_dir / f.name)
    fsync_dir(dest_dir)
    return final


def default_out_dir(name: str) -> Path:
    return Path("exports") / name


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
