"""Named tolerances per dtype, and the one way an artifact's logits are compared with its reference's.

An exported artifact agrees with its reference when every logit is within
`atol + rtol * max|reference logit of that clip|` and the predicted class is
the same wherever the reference's margin between its top class and the
artifact's choice exceeds that bound (a margin smaller than the tolerated
error is a tie, not a disagreement).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
# INT8 (and bf16, 8 bits of mantissa) round every activation: the logits move by a few percent of the
# largest one, and a class whose margin is within that may flip. The Top-1 gate on shards judges them
# as it judges the others; this bound only serves the synthetic-clip check.
INT8 = Tolerance("int8", atol=1e-3, rtol=0.1, min_top1_agreement=0.9)
BF16 = Tolerance("bf16", atol=1e-3, rtol=0.05, min_top1_agreement=0.95)
TOLERANCES = {t.name: t for t in (FP32, FP16, INT8, BF16)}


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
