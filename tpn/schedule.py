"""Learning-rate schedule of the seed recipe: linear batch scaling, optional warmup, step decay.

Everything here is a pure function of the optimizer step, so a resumed run
recomputes the same rate from its step counter alone, and a rate kept in a
device tensor (CUDA-graph training) is refreshed with one in-place fill.
"""

from __future__ import annotations

from dataclasses import dataclass


def scaled_lr(base_lr: float, base_batch: int, global_batch: int) -> float:
    """Linear scaling rule: the recipe's lr is for `base_batch` clips (lr 0.01 per 64 clips)."""
    if base_batch < 1 or global_batch < 1:
        raise ValueError(f"batch sizes must be >= 1, got base {base_batch}, global {global_batch}")
    return base_lr * global_batch / base_batch


@dataclass(frozen=True, kw_only=True)
class StepSchedule:
    """lr(step): linear warmup over `warmup_epochs`, then x`gamma` at each epoch in `milestones`."""

    base_lr: float
    steps_per_epoch: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0

    def __post_init__(self) -> None:
        if self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {self.steps_per_epoch}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_epochs * self.steps_per_epoch)

    def decay(self, step: int) -> float:
        """gamma ** (number of milestones reached); milestones are epoch boundaries."""
        passed = sum(1 for m in self.milestones if step >= m * self.steps_per_epoch)
        return self.gamma**passed

    def warmup(self, step: int) -> float:
        """Linear ramp (step + 1) / warmup_steps, so the first step already moves."""
        w = self.warmup_steps
        return 1.0 if step >= w else (step + 1) / w

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.base_lr * self.decay(step) * self.warmup(step)
