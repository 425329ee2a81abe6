"""Synthetic demo shards for the training and test-protocol tests, built once per test session.

The set is the project's synthetic motion dataset (`pipeline.synth`: class =
direction x speed of a moving object), sharded as VP9. Every module asks for
it through `synthetic_shards`, which reuses what an earlier module of the
same session already built. The quick tests read one 128-video train shard
and the val shard; only the learning test (slow) needs the whole train split,
so the quick set holds just those (`full=True` builds all of it).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.shard import shard_dataset
from pipeline.synth import make_dataset

# 8 classes; 64 (quick set: 16) train and 8 val videos per class, 96x72, 32 frames.
SYNTH = dict(classes=8, train_per_class=64, val_per_class=8, frames=32, size=(96, 72), seed=0)
TRAIN_VIDEOS, VAL_VIDEOS = 8 * 64, 8 * 8
SHARD_SAMPLES = 128  # train-000000.tar .. train-000003.tar (quick set: train-000000.tar), val-000000.tar


def synthetic_shards(base: Path, full: bool = False) -> Path:
    """Build (or reuse) the shards under `base` and return the shard directory: the quick set, or with `full`
    the whole train split."""
    root = base / ("tpn-synthetic" if full else "tpn-synthetic-quick")
    out = root / "shards"
    if (out / "manifest.json").is_file():
        return out
    raw = make_dataset(root / "raw", **{**SYNTH, **({} if full else {"train_per_class": SHARD_SAMPLES // 8})})
    shard_dataset(raw, out, short_side=None, shard_samples=SHARD_SAMPLES, workers=2)
    return out
