"""Which samples form which batch on which rank: pure functions of the seed and epoch.

Training: one permutation of all samples per (seed, epoch); rank r takes
every world_size-th sample of it starting at r, cut to a whole number of
batches that is the same on every rank (so DDP steps stay in lockstep).
The few samples left over change every epoch with the permutation.

Test: no shuffling; rank r takes samples r, r + W, r + 2W, ... so every
sample is seen exactly once over all ranks, and the last batch may be
partial. Ranks may differ by one batch.

Batch b of epoch e on rank r is a function of (seed, e, r, W) alone, which
is what makes a mid-epoch resume exact without replaying earlier batches.
"""

from __future__ import annotations

import numpy as np

_PERMUTATION_STREAM = 1


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of all samples in training epoch `epoch`."""
    return np.random.default_rng([seed, epoch, _PERMUTATION_STREAM]).permutation(num_samples)


def num_train_batches(num_samples: int, batch_size: int, world_size: int) -> int:
    """Full batches per rank per epoch (the partial rest is dropped)."""
    return (num_samples // world_size) // batch_size


def train_batches(num_samples: int, batch_size: int, seed: int, epoch: int, rank: int, world_size: int) -> np.ndarray:
    """(batches, batch_size) sample indices of rank `rank` in epoch `epoch`."""
    count = num_train_batches(num_samples, batch_size, world_size)
    mine = epoch_permutation(num_samples, seed, epoch)[rank::world_size]
    return mine[: count * batch_size].reshape(count, batch_size)


def eval_samples(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """Sample indices of rank `rank` in test order."""
    return np.arange(rank, num_samples, world_size)


def num_eval_batches(num_samples: int, batch_size: int, rank: int, world_size: int) -> int:
    mine = len(range(rank, num_samples, world_size))
    return -(-mine // batch_size)


def eval_batch(num_samples: int, batch_size: int, batch: int, rank: int, world_size: int) -> np.ndarray:
    """Sample indices of test batch `batch` on rank `rank` (the last one may be short)."""
    mine = eval_samples(num_samples, rank, world_size)
    return mine[batch * batch_size : (batch + 1) * batch_size]


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
