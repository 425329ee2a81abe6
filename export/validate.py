"""The Top-1 gate: an exported artifact is trusted only if it classifies like its PyTorch model.

With validation shards, each artifact (ONNX Runtime on CPU or CUDA,
OpenVINO, or a TensorRT engine, through `export.runtime`) and the PyTorch FP32 model see
the same test-protocol views (`pipeline.ClipLoader` in test mode with the
model's ClipSpec); each video's score is its views' mean softmax, as in
`tpn.metrics`. Several artifacts of one model are gated in one pass over
the data, so the videos are decoded and PyTorch runs once.

The criteria, each reported with its value and threshold:

  videos          at least `min_videos` videos (default 300). With N videos
                  and no disagreement at all, the disagreement rate is below
                  3/N at 95% confidence (the "rule of three"): 300 videos are
                  the fewest that can show it is below 1%.
  reference       the PyTorch reference is clearly above chance: a one-sided
                  exact binomial test of its correct count against chance,
                  p <= `chance_alpha` (default 0.001). Chance is the larger of
                  1/classes and the share of the most frequent label among the
                  videos (what always guessing that class scores).
  Top-1 diff      |artifact Top-1 - PyTorch Top-1| <= `max_drop` points, in
                  both directions: a large gain means another model.
  agreement       share of videos whose top-1 class is PyTorch's >=
                  `min_agreement` (default 0.99, see MIN_AGREEMENT).
  zoo             when the weights are the zoo's (sha256 recorded in the zoo
                  config, or `zoo_checkpoint=True`), Top-1 at most `max_drop`
                  points below the zoo's published Top-1 (measured on the full
                  validation set: on a subset this includes sampling noise).

If the first two do not hold the gate *refuses*: no Top-1 statement can be
made on those videos, whatever the artifact does, and the message names the
likely causes. Only a pass writes `<artifact>.validated.json`
(`export.marker`), which binds the verdict to the artifact, the weights, the
data, the protocol and the thresholds; any other verdict removes an earlier
marker.

Without shards the gate compares per-clip logits on seeded synthetic clips
under the artifact's dtype tolerance, and the report says that no accuracy
was validated. Such a check writes no marker; when it fails it removes an
earlier one, when it passes it leaves it as it is.

    python -m export.validate exports/tpn_r50_f8s8/tpn_r50_f8s8.fp16.onnx --model tpn_r50_f8s8 \\
        --checkpoint ckpt.pth --val-shards shards/k400/
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export import runtime
from export.errors import EXIT_CODES_HELP, EXIT_FAILED, EXIT_OK, ExportError, positive_int
from export.marker import write_marker
from export.artifact import (
    artifact_metadata,
    calibration_of,
    check_artifact_model,
    check_artifact_weights,
    check_view_size,
)
from export.outputs import validated_marker, write_json
from export.shards import shard_fingerprint, validation_split, view_batches
from export.source import ModelSource, load_model, reference_logits, synthetic_clips
from export.tolerance import BF16, FP16, FP32, INT8, Agreement, AgreementMeter, Tolerance
from pipeline import storage
from pipeline.cli import add_split_arg
from tpn import accuracy, average_views
from tpn.cli import add_checkpoint_arg

NO_ACCURACY = (
    "no accuracy was validated: only per-clip logit agreement with PyTorch on {n} synthetic clips; "
    "pass validation shards (--val-shards DIR) to check Top-1"
)
# Measured (README, "Export, validate and run"): the FP16 ONNX of the demo's trained tiny TPN picked
# PyTorch FP32's class on 400 of 400 unseen synthetic validation videos (2400 of 2400 views), i.e.
# above 99.25% at 95% confidence; 0.99 lets such an export pass and fails a systematic error.
MIN_AGREEMENT = 0.99
MIN_VIDEOS = 300  # rule of three: 0 disagreements in 300 videos bounds the rate below 1% (95% conf.)
CHANCE_ALPHA = 1e-3
MAX_DROP = 0.3
REFUSAL_CAUSES = (
    "likely causes: the wrong split or shards (another dataset, or a classes.json in another order), "
    "an untrained checkpoint (no --checkpoint means random weights), or a checkpoint of another dataset"
)


@dataclass(frozen=True)
class Thresholds:
    max_drop: float = MAX_DROP
    min_agreement: float = MIN_AGREEMENT
    min_videos: int = MIN_VIDEOS
    chance_alpha: float = CHANCE_ALPHA


@dataclass
class Criterion:
    """One test of the gate: `value` compared with `threshold` by `rule`."""

    key: str  # videos, chance, top1_difference, agreement, zoo, logits
    name: str
    value: float | None
    rule: str  # ">=" or "<="
    threshold: float
    passed: bool
    detail: str = ""

    def line(self) -> str:
        mark = "ok  " if self.passed else "FAIL"
        value = "-" if self.value is None else f"{self.value:.6g}"
        detail = f" - {self.detail}" if self.detail else ""
        return f"[{mark}] {self.name}: {value} (needs {self.rule} {self.threshold:g}){detail}"


@dataclass(frozen=True)
class Judgement:
    """What the scores say, against the thresholds: `judge`'s (pure) answer, copied whole into a GateReport."""

    thresholds: Thresholds
    verdict: str  # "passed", "failed" or "refused" (no Top-1 statement possible on these videos)
    passed: bool
    criteria: list[Criterion]
    failures: list[str]
    videos: int = 0
    artifact_top1: float | None = None
    torch_top1: float | None = None
    difference: float | None = None  # artifact - PyTorch, in points
    prediction_agreement: float | None = None  # share of videos where both pick the same class
    chance_top1: float | None = None
    chance_p_value: float | None = None
    zoo_top1: float | None = None
    zoo_checked: bool = False


@dataclass(frozen=True, kw_only=True)
class GateReport(Judgement):
    """One artifact's gate, made once when the gate is over (`gate`): the `Judgement`, and who was judged on
    what."""

    artifact: str
    model: str
    source: ModelSource
    backend: str
    precision: str
    mode: str  # "shards" or "synthetic"
    accuracy_validated: bool = False
    agreement: Agreement | None = None  # per-view logits vs PyTorch
    shards: dict | None = None  # location, split, fingerprint
    protocol: dict | None = None
    views_per_video: int = 0
    notes: list[str] = field(default_factory=list)
    marker: str | None = None
    seconds: float = 0.0

    @classmethod
    def of(cls, judgement: Judgement, **fields) -> GateReport:
        """A report holding `judgement`'s results and the given identity, data and notes fields."""
        return cls(**{f.name: getattr(judgement, f.name) for f in dataclass_fields(Judgement)}, **fields)

    def summary(self) -> str:
        verdict = self.verdict.upper()
        if self.mode == "synthetic":
            return f"gate {verdict} on synthetic clips ({self.agreement.summary()}); {self.notes[0]}"
        text = (
            f"gate {verdict}: {Path(self.artifact).name} ({self.backend}, {self.precision}) Top-1 "
            f"{_pct(self.artifact_top1)} vs PyTorch FP32 {_pct(self.torch_top1)}, same prediction on "
            f"{_pct(None if self.prediction_agreement is None else 100 * self.prediction_agreement)} of "
            f"{self.videos} videos x {self.views_per_video} views"
        )
        criteria = "".join(f"\n  {c.line()}" for c in self.criteria) + "".join(f"\n  ! {f}" for f in self.failures)
        return text + criteria + "".join(f"\n  note: {n}" for n in self.notes if n == OPTIMISTIC)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}%"


# ----------------------------------------------------------------- pure maths of the verdict


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): how likely `k` correct of `n` is by chance alone."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    dist = torch.distributions.Binomial(total_count=n, probs=torch.tensor(p, dtype=torch.float64))
    ks = torch.arange(k, n + 1, dtype=torch.float64)
    return float(dist.log_prob(ks).logsumexp(0).exp().clamp(max=1.0))


def chance_level(labels: torch.Tensor, num_classes: int) -> float:
    """The Top-1 of guessing: 1/classes, or always naming the most frequent label if that scores more."""
    majority = float(labels.bincount().max()) / len(labels) if len(labels) else 0.0
    return max(1.0 / num_classes, majority)


def judge(
    t: Thresholds, art: torch.Tensor, ref: torch.Tensor, labels: torch.Tensor, zoo_top1: float | None
) -> Judgement:
    """Results, criteria and verdict from (N, K) per-video scores of the artifact and of PyTorch (pure)."""
    n, num_classes = len(labels), ref.shape[1]
    artifact_top1, torch_top1 = accuracy(art, labels)["top1"], accuracy(ref, labels)["top1"]
    difference = round(artifact_top1 - torch_top1, 6)
    agreement = float((art.argmax(1) == ref.argmax(1)).float().mean())
    chance_top1 = 100.0 * chance_level(labels, num_classes)
    correct = int((ref.argmax(1) == labels).sum())
    chance_p = binomial_tail(correct, n, chance_top1 / 100.0)
    criteria = [
        Criterion("videos", "videos", n, ">=", t.min_videos, n >= t.min_videos, _videos_detail(n)),
        Criterion(
            "chance",
            "reference above chance (binomial p-value)",
            chance_p,
            "<=",
            t.chance_alpha,
            chance_p <= t.chance_alpha,
            f"PyTorch FP32 Top-1 {torch_top1:.2f}% vs chance {chance_top1:.2f}%",
        ),
        Criterion(
            "top1_difference",
            "|Top-1 difference| (points)",
            abs(difference),
            "<=",
            t.max_drop,
            abs(difference) <= t.max_drop,
            f"artifact - PyTorch = {difference:+.2f}",
        ),
        Criterion(
            "agreement",
            "per-video top-1 agreement",
            agreement,
            ">=",
            t.min_agreement,
            agreement >= t.min_agreement,
        ),
    ]
    if zoo_top1 is not None:
        below = zoo_top1 - artifact_top1
        criteria.append(
            Criterion(
                "zoo",
                "points below the zoo's Top-1",
                below,
                "<=",
                t.max_drop,
                below <= t.max_drop,
                f"zoo {zoo_top1:.2f}%",
            )
        )
    verdict = gate_verdict(criteria)
    j = Judgement(
        t,
        verdict,
        verdict == "passed",
        criteria,
        [],
        n,
        artifact_top1,
        torch_top1,
        difference,
        agreement,
        chance_top1,
        chance_p,
        zoo_top1,
        zoo_top1 is not None,
    )
    j.failures.extend(failure_lines(j))
    return j


def _videos_detail(n: int) -> str:
    return f"one video is {100.0 / n:.2f} points" if n else "no videos"


def gate_verdict(criteria: list[Criterion]) -> str:
    """'refused' when the data cannot support a Top-1 statement, else 'passed' or 'failed'."""
    by_key = {c.key: c for c in criteria}
    if not by_key["videos"].passed or not by_key["chance"].passed:
        return "refused"
    return "passed" if all(c.passed for c in criteria) else "failed"


def videos_to_beat_chance(chance: float, alpha: float) -> int:
    """The fewest videos on which even an all-correct reference passes the chance test: chance^n <= alpha."""
    if chance <= 0.0:
        return 1
    if chance >= 1.0:
        return 0  # never: guessing is always right
    return max(1, math.ceil(math.log(alpha) / math.log(chance) - 1e-9))


def chance_refusal(report: Judgement) -> str:
    """Why the chance test failed: a set too small for it to pass at all, or a reference near chance."""
    t, n, chance = report.thresholds, report.videos, report.chance_top1 / 100.0
    best = binomial_tail(n, n, chance)  # all n correct
    if best > t.chance_alpha:
        need = videos_to_beat_chance(chance, t.chance_alpha)
        return (
            f"refused: {n} videos are too few for the chance test to pass at all: even {n}/{n} correct has "
            f"p = {best:.3g} against chance {100 * chance:.2f}%, above --chance-alpha {t.chance_alpha:g}; it "
            + (
                f"needs at least {need} videos at this chance level, or a larger --chance-alpha"
                if need
                else "cannot pass while one label is every video's: validate on more classes"
            )
        )
    return (
        f"refused: PyTorch FP32 itself gets {report.torch_top1:.2f}% on these {n} videos, not clearly above "
        f"chance ({report.chance_top1:.2f}%, p = {report.chance_p_value:.3g} > --chance-alpha {t.chance_alpha:g}); "
        f"{REFUSAL_CAUSES}"
    )


def failure_lines(report: Judgement) -> list[str]:
    """What went wrong, in words a user can act on."""
    t, lines = report.thresholds, []
    for c in report.criteria:
        if c.passed:
            continue
        if c.key == "videos":
            lines.append(
                f"refused: {report.videos} videos are too few for a Top-1 statement (--min-videos {t.min_videos}): "
                "validate on more videos, or lower --min-videos knowing the gate then says less"
            )
        elif c.key == "chance":
            lines.append(chance_refusal(report))
        elif c.key == "top1_difference":
            way = "below" if report.difference < 0 else "above"
            lines.append(
                f"Top-1 is {abs(report.difference):.2f} points {way} PyTorch FP32 (max {t.max_drop})"
                + ("; a gain this large means the artifact is another model" if way == "above" else "")
            )
        elif c.key == "agreement":
            lines.append(f"only {100 * c.value:.2f}% of videos get PyTorch's class (needs {100 * t.min_agreement:g}%)")
        else:
            lines.append(
                f"Top-1 {report.artifact_top1:.2f}% is {c.value:.2f} points below the zoo's "
                f"{report.zoo_top1:.2f}% (max {t.max_drop})"
            )
    return lines


# ----------------------------------------------------------------- checks on the inputs


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
    return {"fp16": FP16, "int8": INT8, "bf16": BF16}.get(runner.precision, FP32)


def check_classes(model: nn.Module, shard_classes: int, val_shards: str | os.PathLike) -> None:
    if shard_classes != model.num_classes:
        raise ExportError(
            f"{model.config.name} has {model.num_classes} classes but the shards in {val_shards} have "
            f"{shard_classes} (classes.json): these are not the model's validation data, or not its checkpoint"
        )


def protocol_of(clip) -> dict:
    """The test views a verdict holds for."""
    return {
        "views": clip.num_test_views,
        "clips": clip.num_test_clips,
        "crops": clip.test_crops,
        "flip": clip.test_flip,
        "frames": clip.frames,
        "stride": clip.stride,
        "sampling": clip.sampling,
        "test_scale": clip.test_scale,
        "test_crop": clip.test_crop,
    }


# ----------------------------------------------------------------- running the artifacts


@dataclass
class _Track:
    """One artifact's running state over the shards."""

    artifact: str
    runner: runtime.Runner
    meter: AgreementMeter
    scores: list[torch.Tensor] = field(default_factory=list)


def synthetic_pass(runner: runtime.Runner, model: nn.Module, *, clips: int, seed: int) -> Agreement:
    """The artifact's logits against PyTorch's on seeded synthetic clips."""
    clip = model.config.clip
    x = synthetic_clips(clips, tuple(runner.input_shape[1:]), mean=clip.mean, std=clip.std, seed=seed)
    meter = AgreementMeter(artifact_tolerance(runner))
    for i in range(0, clips, 4):
        xb = torch.from_numpy(x[i : i + 4])
        meter.add(_np(runner(xb)), _np(reference_logits(model, xb)))
    return meter.result()


def judge_logits(t: Thresholds, agreement: Agreement) -> Judgement:
    """The synthetic check's verdict: logits within tolerance of PyTorch's (no Top-1 statement; pure)."""
    ok = agreement.worst_excess <= 1.0
    criterion = Criterion(
        "logits", "worst logit error / allowed", agreement.worst_excess, "<=", 1.0, ok, agreement.summary()
    )
    failures = [] if ok else [f"logits disagree with PyTorch: {agreement.summary()}"]
    return Judgement(t, "passed" if ok else "failed", ok, [criterion], failures)


def shard_pass(
    tracks: list[_Track], model: nn.Module, *, val_shards, split: str | None, batch_size: int, max_videos: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run PyTorch once and every artifact over the shards; returns (PyTorch scores, labels), one row per video."""
    from tqdm import tqdm

    clip = model.config.clip
    views = clip.num_test_views
    ref, labels = [], []
    bar = tqdm(total=max_videos, unit="video", desc="gate", disable=None, file=sys.stderr)  # on a terminal only
    batches = view_batches(
        val_shards,
        clip,
        batch_size=batch_size,
        split=split,
        what="validation shards",
        on_open=lambda n: check_classes(model, n, val_shards),
    )
    with contextlib.closing(batches):
        for clips, y in batches:
            bar.update(len(y))
            x = clips.flatten(0, 1)  # (N * V, 3, T, H, W), video by video
            r = reference_logits(model, x).cpu()
            ref.append(average_views(r, views))
            labels.append(y.cpu())
            for t in tracks:
                check_view_size(t.runner, tuple(x.shape[-2:]), model.config.name)
                a = t.runner(x).float().cpu()
                t.meter.add(a.numpy(), r.numpy())
                t.scores.append(average_views(a, views))
            if max_videos and sum(len(v) for v in labels) >= max_videos:
                break
    bar.close()
    if not labels:
        raise ExportError(f"no videos in {val_shards}" + (f" (split {split!r})" if split else ""))
    cut = max_videos or None
    return torch.cat(ref)[:cut], torch.cat(labels)[:cut]


def zoo_target(model: nn.Module, source: ModelSource, zoo_checkpoint: bool | None) -> tuple[float | None, str | None]:
    """(zoo Top-1 the artifacts are held to, or None when the weights are not the zoo's; a note saying why not).

    Raises ExportError when the zoo check is asked for but the zoo publishes
    no Top-1: the gate calls it before decoding any video.
    """
    cfg = model.config
    if zoo_checkpoint is False:
        return None, None
    if zoo_checkpoint is None and source.weights != "zoo":
        why = "no checkpoint" if source.checkpoint is None else "the checkpoint's sha256 is not the zoo's"
        if cfg.weights_sha256 is None:
            why = f"the zoo records no weights sha256 for {cfg.name}"
        return None, f"zoo Top-1 not checked: {why} (zoo_checkpoint=True forces it)"
    if cfg.top1 is None:
        raise ExportError(f"{cfg.name} has no published Top-1 to check against")
    return cfg.top1, None


# ----------------------------------------------------------------- entry points


def gate(
    artifacts: list[str | os.PathLike],
    *,
    model_name: str | nn.Module,
    checkpoint: str | os.PathLike | None = None,
    val_shards: str | os.PathLike | None = None,
    split: str | None = "val",
    thresholds: Thresholds = Thresholds(),
    backend: runtime.Backend = "auto",
    zoo_checkpoint: bool | None = None,
    batch_size: int = 4,
    max_videos: int | None = None,
    synthetic: int = 8,
    other_architecture: bool = False,
    seed: int = 0,
    source: ModelSource | None = None,
) -> list[GateReport]:
    """Gate every artifact of one model against PyTorch (see the module docstring); one report each.

    `model_name` may also be a zoo model already holding the weights (from
    `tpn.create_model` or `export.source.load_model`), as the export pipeline
    passes it, with `source` saying where its weights came from (else a
    module counts as weights of unknown origin). `split` picks `<split>-*.tar` of the shard folder ("all" or
    None: every tar). Raises ExportError for unusable inputs (unknown model,
    wrong checkpoint, missing shards or split, an artifact of another model
    or input size).
    """
    t0 = time.perf_counter()
    if batch_size < 1 or (max_videos is not None and max_videos < 1):
        raise ExportError(
            f"batch_size and max_videos must be >= 1 (max_videos=None: every video), got {batch_size}, {max_videos}"
        )
    if isinstance(model_name, str) and checkpoint is None:
        raise ExportError(
            f"the gate needs the weights the artifacts were exported from (--checkpoint): a fresh {model_name} "
            "has random weights that no exported artifact matches"
        )
    split = validation_split(val_shards, split) if val_shards is not None else split
    name = model_name if isinstance(model_name, str) else model_name.config.name
    metas = [artifact_metadata(a) for a in artifacts]
    for meta, art in zip(metas, artifacts):
        check_artifact_model(meta, art, name)
    model, loaded = load_model(model_name, checkpoint, other_architecture=other_architecture)
    source = source or loaded
    for meta, art in zip(metas, artifacts):
        check_artifact_weights(meta, art, source)
    zoo = zoo_target(model, source, zoo_checkpoint) if val_shards is not None else (None, None)
    tracks = [_new_track(a, backend) for a in artifacts]
    on_gpu = any(t.runner.device.type == "cuda" for t in tracks)
    model = model.to(torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu"))
    with strict_fp32():
        if val_shards is None:
            results = [_synthetic_result(t, model, thresholds, synthetic, seed) for t in tracks]
        else:
            results = _shard_results(tracks, model, val_shards, split, zoo, thresholds, batch_size, max_videos)
    reports = []
    for meta, t, (judgement, fields) in zip(metas, tracks, results):
        if calibrated_on_gated_split(meta, fields.get("shards")):
            fields = {**fields, "notes": [*fields.get("notes", []), OPTIMISTIC]}
        report = GateReport.of(
            judgement,
            artifact=t.artifact,
            model=source.name,
            source=source,
            backend=t.runner.backend,
            precision=t.runner.precision,
            seconds=round(time.perf_counter() - t0, 2),
            **fields,
        )
        marker, note = mark(report)
        reports.append(replace(report, marker=marker, notes=[*report.notes, *([note] if note else [])]))
    return reports


OPTIMISTIC = (
    "optimistic: this INT8 file's scales were calibrated on the very videos judged here; gate it on other "
    "videos (or quantize again from other calibration shards) for a fair verdict"
)


def calibrated_on_gated_split(meta: dict[str, str], shards: dict | None) -> bool:
    """Whether an INT8 file was calibrated on the split this gate judged (the fingerprints match)."""
    calibration = calibration_of(meta)
    return bool(calibration and shards and shards.get("fingerprint") == calibration.get("fingerprint"))


def _new_track(artifact, backend) -> _Track:
    runner = runtime.load(artifact, backend=backend)
    return _Track(str(artifact), runner, AgreementMeter(artifact_tolerance(runner)))


def _synthetic_result(t: _Track, model: nn.Module, thresholds: Thresholds, clips: int, seed: int):
    agreement = synthetic_pass(t.runner, model, clips=clips, seed=seed)
    return judge_logits(thresholds, agreement), {
        "mode": "synthetic",
        "agreement": agreement,
        "notes": [NO_ACCURACY.format(n=clips)],
    }


def _shard_results(tracks, model, val_shards, split, zoo: tuple, thresholds, batch_size, max_videos) -> list:
    ref, labels = shard_pass(
        tracks, model, val_shards=val_shards, split=split, batch_size=batch_size, max_videos=max_videos
    )
    data = {"location": _location(val_shards), "split": split}
    try:
        fp = shard_fingerprint(val_shards, split)
        data.update(fingerprint=fp.sha256, fingerprint_kind=fp.kind)
    except ExportError as e:
        data.update(fingerprint=None, fingerprint_kind=str(e))
    target, note = zoo
    results = []
    for t in tracks:
        judgement = judge(thresholds, torch.cat(t.scores)[: len(labels)], ref, labels, zoo_top1=target)
        results.append(
            (
                judgement,
                {
                    "mode": "shards",
                    "agreement": t.meter.result(),
                    "views_per_video": model.config.clip.num_test_views,
                    "shards": data,
                    "protocol": protocol_of(model.config.clip),
                    "accuracy_validated": judgement.passed,
                    "notes": [note] if note else [],
                },
            )
        )
    return results


def _location(shards: str | os.PathLike) -> str:
    """Where the shards are, as the marker records it: a URL as given, a path made absolute."""
    return str(shards) if storage.is_remote(shards) else str(Path(shards).resolve())


def validate(artifact: str | os.PathLike, **kwargs) -> GateReport:
    """Gate one artifact; see `gate` for the arguments."""
    return gate([artifact], **kwargs)[0]


def mark(report: GateReport) -> tuple[str | None, str | None]:
    """Write `<artifact>.validated.json` on a passing gate with shards; remove any earlier one on a failure.
    Returns (the marker written, or None; a note for the report, or None).

    A passing synthetic check says nothing about Top-1, so it neither
    writes a marker nor takes away one an earlier gate on shards wrote
    (`check_marker` still tells whether that one holds).
    """
    marker = validated_marker(report.artifact)
    if not report.passed:
        marker.unlink(missing_ok=True)
        return None, None
    if report.mode != "shards":
        return None, None
    if report.shards.get("fingerprint") is None:
        marker.unlink(missing_ok=True)
        return None, f"not marked validated: the shards cannot be fingerprinted ({report.shards['fingerprint_kind']})"
    src = report.source
    payload = {
        "model": report.model,
        "checkpoint": {
            "path": str(Path(src.checkpoint).resolve()) if src.checkpoint else None,
            "sha256": src.checkpoint_sha256,
            "zoo_weights": src.weights == "zoo",
        },
        "shards": report.shards,
        "videos": report.videos,
        "protocol": report.protocol,
        "backend": report.backend,
        "precision": report.precision,
        "thresholds": report.thresholds,
        "criteria": report.criteria,
        "results": {
            "artifact_top1": report.artifact_top1,
            "torch_top1": report.torch_top1,
            "difference": report.difference,
            "prediction_agreement": report.prediction_agreement,
            "chance_top1": report.chance_top1,
            "chance_p_value": report.chance_p_value,
            "zoo_top1": report.zoo_top1,
        },
    }
    calibration = calibration_of(artifact_metadata(report.artifact))
    if calibration is not None:  # an INT8 file: the data its scales came from is bound too
        payload["calibration"] = calibration
    return str(write_marker(report.artifact, payload)), None


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


# ----------------------------------------------------------------- CLI


def add_gate_args(p: argparse.ArgumentParser) -> None:
    """Arguments shared with `export.trt`."""
    p.add_argument("--val-shards", help="validation shards: run the Top-1 gate on them (test protocol)")
    add_split_arg(p, of="--val-shards")
    p.add_argument(
        "--max-drop",
        type=float,
        default=MAX_DROP,
        help="largest Top-1 difference allowed, in points, vs PyTorch FP32 (both directions) and below the zoo's "
        "Top-1 (default %(default)s)",
    )
    p.add_argument(
        "--min-agreement",
        type=float,
        default=MIN_AGREEMENT,
        help="smallest share of videos whose top-1 class must be PyTorch's (default %(default)s)",
    )
    p.add_argument(
        "--min-videos",
        type=int,
        default=MIN_VIDEOS,
        help="fewest videos a Top-1 statement is made on; fewer and the gate refuses (default %(default)s: with "
        "no disagreement in 300 videos the disagreement rate is below 1%% at 95%% confidence)",
    )
    p.add_argument(
        "--chance-alpha",
        type=float,
        default=CHANCE_ALPHA,
        help="the PyTorch reference must beat chance with binomial p <= this, else the gate refuses "
        "(default %(default)s; 1 turns the check off, for smoke runs only)",
    )
    p.add_argument("--max-videos", type=positive_int, help="stop after this many videos (quick checks; default: all)")
    p.add_argument(
        "--batch-size", type=positive_int, default=4, help="videos per batch in the gate (default %(default)s)"
    )
    zoo = p.add_mutually_exclusive_group()
    zoo.add_argument(
        "--zoo-checkpoint",
        dest="zoo_checkpoint",
        action="store_true",
        default=None,
        help="hold the artifact to the zoo's Top-1 even though the checkpoint's sha256 is not recorded",
    )
    zoo.add_argument(
        "--no-zoo-check",
        dest="zoo_checkpoint",
        action="store_false",
        help="do not compare with the zoo's Top-1 (default: only when the checkpoint is the zoo's by sha256)",
    )


def thresholds_from(args: argparse.Namespace) -> Thresholds:
    return Thresholds(
        max_drop=args.max_drop,
        min_agreement=args.min_agreement,
        min_videos=args.min_videos,
        chance_alpha=args.chance_alpha,
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.validate",
        description=(
            "Top-1 gate of exported artifacts (.onnx, OpenVINO .xml or TensorRT .engine) against the PyTorch "
            "model. With --val-shards it runs the test protocol and checks: enough videos, a reference above "
            "chance, the Top-1 difference, per-video agreement and (for the zoo's weights) the zoo's Top-1; it writes "
            "<artifact>.validated.json only on a pass. Without --val-shards it compares logits on synthetic "
            "clips and validates no accuracy. Writes <artifact>.gate.json for each artifact."
        ),
        epilog=EXIT_CODES_HELP + " (1 also when the gate refuses: too few videos, or a reference at chance)",
    )
    p.add_argument("artifacts", nargs="+", help="the .onnx, .xml or .engine files to check (one model's)")
    p.add_argument("--model", required=True, help="zoo model name the artifacts were exported from")
    add_checkpoint_arg(p, required=True, what="the weights the artifacts were exported from")
    p.add_argument(
        "--backend",
        choices=runtime.BACKENDS,
        default="auto",
        help="runtime: auto picks TensorRT for engines, OpenVINO for IRs, and for .onnx ONNX Runtime's CUDA "
        "provider on a GPU, else OpenVINO for FP32 and INT8 files where installed, else ONNX Runtime on the CPU "
        "(default %(default)s)",
    )
    add_gate_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reports = gate(
            args.artifacts,
            model_name=args.model,
            checkpoint=args.checkpoint,
            val_shards=args.val_shards,
            split=args.split,
            thresholds=thresholds_from(args),
            backend=args.backend,
            zoo_checkpoint=args.zoo_checkpoint,
            batch_size=args.batch_size,
            max_videos=args.max_videos,
            other_architecture=args.allow_other_architecture,
        )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    for report in reports:
        out = Path(str(report.artifact) + ".gate.json")
        write_json(out, {"settings": vars(args), "gate": report})
        print(report.summary())
        print(f"report: {out}" + (f"; marker: {report.marker}" if report.marker else ""))
    return EXIT_OK if all(r.passed for r in reports) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
