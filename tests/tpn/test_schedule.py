"""The learning-rate schedule: linear batch scaling, warmup and step decay, table-driven."""

import pytest

from tpn.schedule import StepSchedule, scaled_lr


@pytest.mark.parametrize(
    "base_lr, base_batch, global_batch, expected",
    [
        (0.01, 64, 64, 0.01),  # the seed recipe: 8 GPUs x 8 clips
        (0.01, 64, 256, 0.04),  # 32 GPUs x 8 (tools/README: lr 0.04)
        (0.01, 64, 8, 0.00125),  # one GPU
        (0.05, 16, 8, 0.025),
    ],
)
def test_linear_scaling(base_lr, base_batch, global_batch, expected):
    assert scaled_lr(base_lr, base_batch, global_batch) == pytest.approx(expected)


def test_scaling_rejects_empty_batches():
    with pytest.raises(ValueError, match="batch sizes"):
        scaled_lr(0.01, 64, 0)


SEED = StepSchedule(base_lr=0.01, steps_per_epoch=10, milestones=(75, 125), gamma=0.1)


@pytest.mark.parametrize(
    "step, expected",
    [
        (0, 0.01),
        (749, 0.01),  # last step of epoch 74
        (750, 0.001),  # first step of epoch 75
        (1249, 0.001),
        (1250, 0.0001),
        (1499, 0.0001),  # the last of 150 epochs
    ],
)
def test_step_decay_at_epoch_boundaries(step, expected):
    assert SEED(step) == pytest.approx(expected)


WARM = StepSchedule(base_lr=0.1, steps_per_epoch=4, milestones=(3,), warmup_epochs=1)


@pytest.mark.parametrize(
    "step, expected", [(0, 0.025), (1, 0.05), (2, 0.075), (3, 0.1), (4, 0.1), (11, 0.1), (12, 0.01)]
)
def test_linear_warmup_then_decay(step, expected):
    assert WARM(step) == pytest.approx(expected)


def test_fractional_warmup_rounds_to_steps():
    s = StepSchedule(base_lr=1.0, steps_per_epoch=10, warmup_epochs=0.5)
    assert s.warmup_steps == 5
    assert [s(i) for i in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])


def test_no_warmup_and_no_milestones_is_constant():
    s = StepSchedule(base_lr=0.3, steps_per_epoch=7)
    assert {s(i) for i in range(100)} == {0.3}


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(steps_per_epoch=0), "steps_per_epoch"), (dict(steps_per_epoch=3, warmup_epochs=-1), "warmup_epochs")],
)
def test_bad_schedules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StepSchedule(base_lr=0.1, **kwargs)


def test_negative_step_is_refused():
    with pytest.raises(ValueError, match="step"):
        SEED(-1)
