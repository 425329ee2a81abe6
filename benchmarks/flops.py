"""FLOPs of a training step (counted on the meta device) and a device's measured matmul peak: MFU's two
sides, for `benchmarks.train`.
"""

from __future__ import annotations

import statistics
import time

import torch

import tpn
from benchmarks.common import sync
from tpn.engine import (
    LossModule,
)


def count_step_flops(name: str, batch: int) -> float:
    """FLOPs of one training step's forward + backward, counted on the meta device (no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    cfg = tpn.get_config(name)
    with torch.device("meta"):
        model = tpn.create_model(name)
        x = torch.empty(batch, *cfg.input_shape)
        y = torch.zeros(batch, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter:
        LossModule(model, cfg.recipe.aux_weight)(x, y).backward()
    return float(counter.get_total_flops())


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, rounds: int = 5) -> float:
    """Measured dense matmul FLOP/s (n x n x n), median of rounds after a warm-up."""
    a = torch.randn(n, n).to(device, dtype)
    b = torch.randn(n, n).to(device, dtype)
    reps = 20 if device.type == "cuda" else 2
    times = []
    for r in range(rounds + 1):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync(device)
        if r:
            times.append(time.perf_counter() - t0)
    return 2 * n**3 * reps / statistics.median(times)
