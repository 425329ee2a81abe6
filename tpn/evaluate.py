"""Scoring videos with the seed's test protocol: the library part of `python -m tpn.test`.

Every video is seen through the config's views (Kinetics: 10 clips x 3
crops of 256, the whole frame height, fully convolutional; Something-
Something: twice-sample 2 clips x 3 crops; flipped views double them); the
softmax probabilities of a video's views are averaged (`tpn.average_views`)
and scored as Top-1, Top-5 and mean class accuracy. Under torch.distributed
each rank evaluates its share and the results are gathered and deduplicated
by sample key.

`evaluate` backs `python -m tpn.test` and the trainer's validation. The
export gate (`export.validate`) runs its own pass over the same test views,
because it runs PyTorch and every artifact on each batch in lockstep; it
scores a video the same way (the mean of its views' softmax, then the same
accuracy), and `tests/export/test_gate.py` holds the two to the same Top-1.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline import ClipSpec, resolve_split, storage
from tpn.distributed import DistEnv, gather_objects
from tpn.metrics import accuracy, average_views


@dataclass
class VideoScore:
    key: str
    label: int
    probs: list[float]


@dataclass
class EvalReport:
    """Accuracies in percent over `num_videos` videos of `views` views each."""

    top1: float
    top5: float
    mean_class_acc: float
    num_videos: int
    views: int
    time_s: float
    model: str | None = None
    target_top1: float | None = None  # the zoo's published Top-1
    scores: list[VideoScore] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("scores")
        return d

    def table(self) -> str:
        target = "-" if self.target_top1 is None else f"{self.target_top1:.1f}"
        return (
            f"{self.model or 'model'}: {self.num_videos} videos x {self.views} views\n"
            f"  Top-1 {self.top1:6.2f}   Top-5 {self.top5:6.2f}   mean class {self.mean_class_acc:6.2f}"
            f"   (zoo Top-1 {target})"
        )


def _unpack(batch: Sequence) -> tuple[Tensor, Tensor, list[str] | None]:
    if len(batch) == 3:
        clips, labels, keys = batch
        return clips, labels, [str(k) for k in keys]
    clips, labels = batch
    return clips, labels, None


@torch.no_grad()
def video_scores(
    model: nn.Module,
    clips: Tensor,
    *,
    device: torch.device,
    max_clips: int,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> Tensor:
    """(N, V, 3, F, H, W) views -> (N, K) per-video mean softmax probabilities (on the CPU)."""
    n, v = clips.shape[:2]
    flat = clips.flatten(0, 1)  # (N*V, 3, F, H, W), video by video
    logits = []
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    for chunk in flat.split(max_clips):
        chunk = chunk.to(device, non_blocking=True)
        if channels_last:
            chunk = chunk.contiguous(memory_format=torch.channels_last_3d)
        with autocast:
            logits.append(model(chunk).float())
    return average_views(torch.cat(logits), v).cpu()


def evaluate(
    model: nn.Module,
    loader: Iterable,
    *,
    device: torch.device | None = None,
    env: DistEnv | None = None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    max_clips: int = 32,
    keep_scores: bool = False,
) -> EvalReport:
    """Score a test-mode loader's batches ((N, V, 3, F, H, W) clips, labels[, keys]).

    Under torch.distributed every rank must call this with its share; all
    ranks get the same report, built from the gathered videos with
    duplicate keys dropped. Without keys, videos are numbered per rank
    (fine for one process; a distributed run needs `return_keys=True`).
    """
    env = env or DistEnv()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    t0 = time.perf_counter()
    keys, labels, probs, views = [], [], [], 0
    try:
        for batch in loader:
            clips, y, k = _unpack(batch)
            if k is None:
                if env.distributed:
                    raise ValueError("distributed evaluation needs sample keys: build the loader with return_keys=True")
                k = [str(len(keys) + i) for i in range(clips.shape[0])]
            views = clips.shape[1]
            probs.append(
                video_scores(
                    model, clips, device=device, max_clips=max_clips, amp_dtype=amp_dtype, channels_last=channels_last
                )
            )
            labels += [int(v) for v in y.tolist()]
            keys += k
    finally:
        model.train(was_training)
    local = (keys, labels, torch.cat(probs) if probs else torch.empty(0, 0), views)
    return _report(gather_objects(local, env), time.perf_counter() - t0, keep_scores, model)


def _report(parts: list[tuple], elapsed: float, keep_scores: bool, model: nn.Module) -> EvalReport:
    """Merge the ranks' (keys, labels, probs, views), first occurrence of each key wins."""
    seen: dict[str, tuple[int, Tensor]] = {}
    views = max((p[3] for p in parts), default=0)
    for keys, labels, probs, _ in parts:
        for i, key in enumerate(keys):
            seen.setdefault(key, (labels[i], probs[i]))
    if not seen:
        raise ValueError("no videos were evaluated: are the shards empty?")
    order = sorted(seen)
    scores = torch.stack([seen[k][1] for k in order])
    labels = torch.tensor([seen[k][0] for k in order])
    acc = accuracy(scores, labels)
    cfg = getattr(model, "config", None)
    per_video = [VideoScore(k, seen[k][0], seen[k][1].tolist()) for k in order] if keep_scores else None
    return EvalReport(
        **acc,
        num_videos=len(order),
        views=views,
        time_s=elapsed,
        model=getattr(cfg, "name", None),
        target_top1=getattr(cfg, "top1", None),
        scores=per_video,
    )


# ---------------------------------------------------------------------- shards


def shard_source(paths: Sequence[str], split: str | None, flag: str = "--split") -> tuple[str | list[str], str | None]:
    """CLI shard arguments -> (ClipLoader source, split).

    One folder (or a URL not ending in .tar: a shard folder on object storage)
    reads its `<split>-*.tar` (`pipeline.resolve_split`: "all" = every tar; a
    split the folder lacks is an error listing those it has and naming `flag`,
    the flag that gave `split`); .tar paths are read as given, whatever the split.
    """
    if len(paths) == 1 and (
        Path(paths[0]).is_dir() or storage.is_remote(paths[0]) and not str(paths[0]).endswith(".tar")
    ):
        return str(paths[0]), resolve_split(str(paths[0]), split, flag)
    return [str(p) for p in paths], None


def protocol_spec(
    clip: ClipSpec, *, flip: bool | None = None, clips: int | None = None, crops: str | None = None
) -> ClipSpec:
    """The config's test views, with the CLI's changes (flip views, clip count, crop mode)."""
    changes = {}
    if flip is not None:
        changes["test_flip"] = flip
    if clips is not None:
        changes["test_clips"] = clips
    if crops is not None:
        changes["test_crops"] = crops
    return clip.replace(**changes) if changes else clip
