"""Shared pieces of the export tests: a tiny model that really classifies, and ways to damage artifacts."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

import tpn
from pipeline import ClipLoader
from pipeline.shard import shard_dataset
from pipeline.synth import make_dataset
from tpn.checkpoint import save_checkpoint

TINY = "tpn_tiny_f8s4"


def make_val_shards(root: Path, per_class: int = 1) -> Path:
    """Synthetic validation videos (8 motion classes) as VP9 shards, a second or two on CPU."""
    src = make_dataset(root / "synth", train_per_class=0, val_per_class=per_class, frames=40, size=(96, 72), workers=2)
    out = root / "shards"
    shard_dataset(src / "val", out, split="val", short_side=None, workers=2)
    return out


def fit_classifier(
    model: torch.nn.Module, shards: Path, scale: float = 5.0, relabel: Callable[[int, int], int] | None = None
) -> None:
    """Least-squares classifier on the shards' test views, so PyTorch gets them all right.

    Random features of a few dozen views are linearly separable (more
    channels than views), so the fit interpolates: every view scores
    `scale` for its label and ~0 elsewhere. Top-1 is then 100%, and any
    damage to the features shows up as lost accuracy. `relabel(video
    number, label) -> target` fits other targets instead (a model that is
    wrong on chosen videos).
    """
    feats, labels = [], []
    clip = model.config.clip
    with torch.inference_mode():
        for clips, y in ClipLoader(shards, clip, mode="test", batch_size=8, device="cpu"):
            x = clips.flatten(0, 1)
            feat, _ = model.forward_features(x)
            feats.append(feat.mean(dim=(2, 3, 4)))
            labels.append(y)
    y = torch.cat(labels)
    if relabel is not None:
        y = torch.tensor([relabel(i, int(lbl)) for i, lbl in enumerate(y)])
    f, y = torch.cat(feats).double(), y.repeat_interleave(clip.num_test_views)
    a = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], dim=1)  # (n, C + 1)
    target = scale * torch.nn.functional.one_hot(y, model.num_classes).double()
    sol = torch.linalg.lstsq(a, target, driver="gelsd").solution  # (C + 1, K)
    with torch.no_grad():
        model.cls_head.fc_cls.weight.copy_(sol[:-1].T.float())
        model.cls_head.fc_cls.bias.copy_(sol[-1].float())


def trained_tiny(
    root: Path, shards: Path, name: str = TINY, *, seed: int = 0, relabel=None, file: str | None = None
) -> Path:
    """A checkpoint of a tiny model (backbone from `seed`) whose classifier is fitted to the validation shards."""
    torch.manual_seed(seed)
    model = tpn.create_model(name).eval()
    fit_classifier(model, shards, relabel=relabel)
    return save_checkpoint(root / (file or f"{name}.pth"), model)


def scale_initializer(model: onnx.ModelProto, name: str, factor: float) -> None:
    """Scale one weight tensor in place, keeping its dtype."""
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            w = numpy_helper.to_array(t)
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array((w * factor).astype(w.dtype), name))
            return
    raise KeyError(f"no initializer {name}")


def damage(src: str | Path, dst: str | Path, initializer: str, factor: float) -> Path:
    """Copy an ONNX file with one weight tensor scaled by `factor`."""
    model = onnx.load(str(src))
    scale_initializer(model, initializer, factor)
    onnx.save(model, str(dst))
    return Path(dst)
