"""The model zoo: one registry of named, frozen configs, and `create_model`.

Every row of the TPN model zoo (Kinetics-400 SlowOnly R50/R101 baselines
and TPNs at 8x8, 16x4, 32x2; the two TPNs trained on MMAction's Kinetics
copy; TSM-50 baselines and TPNs on Something-Something V1/V2) is an entry
here, with its clip spec, training recipe and the published Top-1. Tiny
entries of each family run the same code with few channels, for tests and
the demo.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from pathlib import Path
from typing import Any

from torch import nn

from pipeline import ClipSpec
from tpn.config import ModelConfig, TrainRecipe
from tpn.model import Recognizer
from tpn.neck import NeckConfig, TPNNeck
from tpn.resnet3d import SlowOnly
from tpn.tsm import TSMResNet

_REGISTRY: dict[str, ModelConfig] = {}


def register(cfg: ModelConfig) -> ModelConfig:
    if cfg.name in _REGISTRY:
        raise ValueError(f"model {cfg.name!r} is already registered")
    _REGISTRY[cfg.name] = cfg
    return cfg


def list_models(pattern: str | None = None) -> list[str]:
    """Zoo rows (no pattern), or every name matching a glob such as '*tiny*'."""
    if pattern is None:
        return [n for n, c in _REGISTRY.items() if not c.tiny]
    return [n for n in _REGISTRY if fnmatch.fnmatch(n, pattern)]


def get_config(name: str) -> ModelConfig:
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f" Closest: {', '.join(close)}." if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} See tpn.list_models() (or list_models('*tiny*')).") from None


def apply_overrides(cfg: ModelConfig, overrides: dict[str, Any]) -> ModelConfig:
    """`dataclasses.replace` that also reaches into the neck (e.g. flow='parallel')."""
    top = {f.name for f in dataclasses.fields(ModelConfig)}
    neck_fields = {f.name for f in dataclasses.fields(NeckConfig)}
    neck_changes = {k: v for k, v in overrides.items() if k in neck_fields and k not in top}
    unknown = set(overrides) - top - neck_fields
    if unknown:
        raise TypeError(f"unknown override(s) {sorted(unknown)} for {cfg.name}; valid: {sorted(top | neck_fields)}")
    if neck_changes and cfg.neck is None:
        raise ValueError(f"{cfg.name} has no TPN neck; cannot set {sorted(neck_changes)}")
    top_changes = {k: v for k, v in overrides.items() if k not in neck_changes}
    if neck_changes:
        top_changes["neck"] = cfg.neck.replace(**neck_changes)
    return dataclasses.replace(cfg, **top_changes)


def build_model(cfg: ModelConfig) -> Recognizer:
    if cfg.backbone == "slowonly":
        backbone: nn.Module = SlowOnly(cfg.depth, cfg.width, cfg.blocks, cfg.with_cp)
    elif cfg.backbone == "tsm":
        backbone = TSMResNet(cfg.depth, cfg.width, cfg.blocks, cfg.clip.frames, cfg.shift_shortcut, cfg.with_cp)
    else:
        raise ValueError(f"unknown backbone {cfg.backbone!r}")
    neck = None
    if cfg.neck is not None:
        neck = TPNNeck(backbone.channels[2:], cfg.num_classes, cfg.neck)
    return Recognizer(backbone, neck, cfg)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    checkpoint: str | Path | dict | None = None,
    **overrides: Any,
) -> Recognizer:
    """Build a zoo model by name; `overrides` replace config fields (or neck fields).

    With `checkpoint`, weights are loaded strictly (see `tpn.load_checkpoint`).
    """
    cfg = get_config(name)
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    model = build_model(cfg)
    if checkpoint is not None:
        from tpn.checkpoint import load_checkpoint

        load_checkpoint(model, checkpoint)
    return model


# ---------------------------------------------------------------- zoo rows

KINETICS = dict(num_classes=400, dataset="kinetics400")
STH_RECIPE = TrainRecipe(weight_decay=5e-4, clip_grad=20.0)
# Seed K400 training: RandomResizedCrop(224), flip, colour jitter; test 10 clips x 3 crops of 256.
_K400_CLIP = ClipSpec(color_jitter=True)
# Seed Sth training: 8 TSN segments; test twice-sample (2 clips) x 3 crops of 256.
_STH_CLIP = ClipSpec(frames=8, stride=1, sampling="segments", color_jitter=True, twice_sample=True)

# The seed's rows (MODEL_ZOO.md), one per name: a reader finds a model by searching for its name.
# name, ResNet depth, frames x stride, TPN neck, Top-1 target, the original config file.
_KINETICS_ROWS = (
    ("baseline_r50_f8s8", 50, (8, 8), False, 74.9, "baseline/r50f8s8.py"),
    ("tpn_r50_f8s8", 50, (8, 8), True, 76.1, "tpn/r50f8s8.py"),
    ("baseline_r50_f16s4", 50, (16, 4), False, 76.1, "baseline/r50f16s4.py"),
    ("tpn_r50_f16s4", 50, (16, 4), True, 77.3, "tpn/r50f16s4.py"),
    ("baseline_r50_f32s2", 50, (32, 2), False, 75.7, "baseline/r50f32s2.py"),
    ("tpn_r50_f32s2", 50, (32, 2), True, 77.7, "tpn/r50f32s2.py"),
    ("baseline_r101_f8s8", 101, (8, 8), False, 76.0, "baseline/r101f8s8.py"),
    ("tpn_r101_f8s8", 101, (8, 8), True, 77.2, "tpn/r101f8s8.py"),
    ("baseline_r101_f16s4", 101, (16, 4), False, 77.0, "baseline/r101f16s4.py"),
    ("tpn_r101_f16s4", 101, (16, 4), True, 78.1, "tpn/r101f16s4.py"),
    ("baseline_r101_f32s2", 101, (32, 2), False, 77.4, "baseline/r101f32s2.py"),
    ("tpn_r101_f32s2", 101, (32, 2), True, 78.9, "tpn/r101f32s2.py"),
    # trained on MMAction's Kinetics copy
    ("tpn_r50_f8s8_mmaction", 50, (8, 8), True, 76.7, "tpn/r50f8s8.py (trained on MMAction's Kinetics copy)"),
    ("tpn_r101_f8s8_mmaction", 101, (8, 8), True, 78.2, "tpn/r101f8s8.py (trained on MMAction's Kinetics copy)"),
)
# name, dataset, TPN neck, Top-1 target, the original config file (TSM-50, 8 segments).
_STH_ROWS = (
    ("tsm50_baseline_sthv1", "sthv1", False, 48.2, "sthv1/tsm_baseline.py"),
    ("tsm50_tpn_sthv1", "sthv1", True, 50.7, "sthv1/tsm_tpn.py"),
    ("tsm50_baseline_sthv2", "sthv2", False, 62.3, "sthv2/tsm_baseline.py"),
    ("tsm50_tpn_sthv2", "sthv2", True, 64.7, "sthv2/tsm_tpn.py"),
)


def kinetics_neck(depth: int, frames: int) -> NeckConfig:
    """R50: both levels pooled to T=1. R101: level 0 to T=2, level 1 to T=1."""
    if depth == 50:
        return NeckConfig(temporal_scales=(frames, frames))
    return NeckConfig(
        temporal_scales=(frames // 2, frames),
        downsample_scale=(2, 1, 1),
        fusion_scales=((2, 1, 1), (1, 1, 1)),
    )


def _register_kinetics() -> None:
    for name, depth, (frames, stride), with_tpn, top1, source in _KINETICS_ROWS:
        register(
            ModelConfig(
                name=name,
                backbone="slowonly",
                depth=depth,
                clip=_K400_CLIP.replace(frames=frames, stride=stride),
                neck=kinetics_neck(depth, frames) if with_tpn else None,
                with_cp=frames > 8,
                top1=top1,
                source=f"config_files/kinetics400/{source}",
                **KINETICS,
            )
        )


def _register_sth() -> None:
    for name, dataset, with_tpn, top1, source in _STH_ROWS:
        register(
            ModelConfig(
                name=name,
                backbone="tsm",
                depth=50,
                clip=_STH_CLIP,
                neck=NeckConfig(temporal_scales=(8, 8)) if with_tpn else None,
                num_classes=174,
                dataset=dataset,
                recipe=STH_RECIPE,
                top1=top1,
                source=f"config_files/{source}",
            )
        )


# Tiny entries: width 8, one block per stage, 8 classes (the synthetic demo
# set), 112 crops. Same modules and code paths as the full models.
# The demo's classes are motion directions: a horizontal flip would turn
# "left" into "right" under the same label, so tiny clips are never flipped,
# and crops keep at least half the frame so the moving object stays in view.
_TINY_CLIP = ClipSpec(
    frames=8,
    stride=4,
    crop_size=112,
    scale_range=(0.5, 1.0),
    flip=False,
    test_scale=128,
    test_crop=128,
    test_clips=2,
)
# No dropout before the classifier: on the 256-d tiny features, dropout 0.5 made the start of
# learning depend on the seed (tests/tpn/test_train.py, test_tiny_tpn_learns_the_synthetic_set).
_TINY = dict(width=8, blocks=(1, 1, 1, 1), num_classes=8, dataset="synthetic", tiny=True, dropout=0.0)
_TINY_RECIPE = TrainRecipe(lr=0.05, lr_batch=16, epochs=12, lr_steps=(8, 11), warmup_epochs=1, batch_size=8)


def _register_tiny() -> None:
    tiny_tsm_clip = _TINY_CLIP.replace(sampling="segments", stride=1, twice_sample=True)
    entries = [
        dict(name="baseline_tiny_f8s4", backbone="slowonly", clip=_TINY_CLIP),
        dict(name="tpn_tiny_f8s4", backbone="slowonly", clip=_TINY_CLIP, neck=NeckConfig(temporal_scales=(8, 8))),
        # The R101 pyramid (levels at T=2 and T=1, broadcast top-down add).
        dict(name="tpn_tiny_pyr_f8s4", backbone="slowonly", clip=_TINY_CLIP, neck=kinetics_neck(101, 8)),
        dict(name="tsm_tiny_baseline", backbone="tsm", clip=tiny_tsm_clip),
        dict(name="tsm_tiny_tpn", backbone="tsm", clip=tiny_tsm_clip, neck=NeckConfig(temporal_scales=(8, 8))),
    ]
    for e in entries:
        register(ModelConfig(recipe=_TINY_RECIPE, **_TINY, **e))


_register_kinetics()
_register_sth()
_register_tiny()


# ------------------------------------------------------------------- CLI


def count_parameters(name: str) -> tuple[int, int]:
    """(all parameters, inference-only parameters without the auxiliary head), built on the meta device."""
    import torch

    with torch.device("meta"):
        model = create_model(name)
    total = sum(p.numel() for p in model.parameters())
    aux = model.neck.aux_head if model.has_aux else None
    return total, total - (sum(p.numel() for p in aux.parameters()) if aux is not None else 0)


def zoo_table(names: list[str]) -> str:
    rows = [
        "| name | frames x stride | backbone | TPN | params (train / infer) | dataset | Top-1 target |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in names:
        c = get_config(n)
        fs = f"{c.clip.frames} x {c.clip.stride}" if c.clip.sampling == "dense" else f"{c.clip.frames} segments"
        bb = ("SlowOnly" if c.backbone == "slowonly" else "TSM") + (" tiny" if c.tiny else f" R{c.depth}")
        total, infer = count_parameters(n)
        top1 = f"{c.top1:.1f}" if c.top1 is not None else "-"
        rows.append(
            f"| `{n}` | {fs} | {bb} | {'yes' if c.with_tpn else '-'} | "
            f"{total / 1e6:.2f}M / {infer / 1e6:.2f}M | {c.dataset} | {top1} |"
        )
    return "\n".join(rows)
