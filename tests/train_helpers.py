"""Synthetic demo shards for the training and test-protocol tests, built once per test session.

The set is the project's synthetic motion dataset (`pipeline.synth`: class =
direction x speed of a moving object), sharded as VP9 so DALI decodes it on
the CPU. Every module asks for it through `synthetic_shards`, which reuses
what an earlier module of the same session already built.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.shard import shard_dataset
from pipeline.synth import make_dataset

# 8 classes; 64 train and 8 val videos per class, 96x72, 32 frames.
SYNTH = dict(classes=8, train_per_class=64, val_per_class=8, frames=32, size=(96, 72), seed=0)
TRAIN_VIDEOS, VAL_VIDEOS = 8 * 64, 8 * 8
SHARD_SAMPLES = 128  # train-000000.tar .. train-000003.tar, val-000000.tar


def synthetic_shards(base: Path) -> Path:
    """Build (or reuse) the shards under `base` and return the shard directory."""
    root = base / "tpn-synthetic"
    out = root / "shards"
    if (out / "manifest.json").is_file():
        return out
    raw = make_dataset(root / "raw", **SYNTH)
    shard_dataset(raw, out, short_side=None, shard_samples=SHARD_SAMPLES, workers=2)
    return out
