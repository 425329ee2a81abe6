"""The training loop's decisions (`step_actions`) as a table, and its throughput accounting."""

import itertools

import pytest

from tpn.trainer import Actions, Throughput, at_max_steps, step_actions
from tpn.train_settings import resolve_settings

SPE = 10  # steps per epoch


def settings(**changes):
    """3 epochs, a loss read-back every 4 steps, validation every 2 epochs (and after the last)."""
    base = {"train": ["x"], "out": "y", "val": ["v"], "epochs": 3, "log_every": 4, "val_every": 2}
    return resolve_settings("tpn_tiny_f8s4", {**base, **changes})


FLUSH = Actions(flush=True)
SAVE = Actions(flush=True, save=True)
STOP = Actions(flush=True, save=True, stop=True)
END = Actions(flush=True, end_epoch=True, save=True)
END_VAL = Actions(flush=True, end_epoch=True, validate=True, save=True)


@pytest.mark.parametrize(
    "step, epoch, done, pending, changes, expected",
    [
        (3, 0, False, 3, {}, Actions()),  # nothing to do: the losses stay on the device
        (4, 0, False, 4, {}, FLUSH),  # --log-every losses pending
        (9, 0, False, 1, {}, Actions()),  # one loss pending: the window was read a step ago
        (5, 0, False, 1, {"save_every": 5}, SAVE),  # flushed first: a checkpoint never follows an unread NaN
        (10, 0, True, 2, {}, END),  # epoch 1 of 3 with --val-every 2: no validation
        (20, 1, True, 2, {}, END_VAL),  # epoch 2
        (30, 2, True, 2, {}, END_VAL),  # the last epoch always validates
        (30, 2, True, 2, {"val": []}, END),  # nothing to validate on
        (10, 0, True, 2, {"val_every": 1}, END_VAL),
        (10, 0, True, 2, {"save_every": 5}, END),  # one checkpoint where --save-every meets an epoch end
        (10, 0, True, 0, {}, END),  # resumed at an epoch's end: end it (an empty flush reads nothing)
        (7, 0, True, 3, {}, END),  # a loader that ran out before its len() batches ends the epoch all the same
        (7, 0, False, 3, {"max_steps": 7}, STOP),
        (10, 0, True, 2, {"max_steps": 10}, STOP),  # a stop on the last batch leaves the epoch open
        (6, 0, False, 2, {"max_steps": 7, "save_every": 3}, SAVE),
        (15, 1, False, 3, {"max_steps": 7}, STOP),  # past the stop point
    ],
)
def test_step_actions(step, epoch, done, pending, changes, expected):
    assert step_actions(step, epoch, done, pending, settings(**changes)) == expected


def test_decisions_keep_their_invariants_everywhere():
    grid = itertools.product(range(1, 31), range(0, 5), (None, 5, 10, 13), (0, 3, 10), ((), ("v",)), (False, True))
    for step, pending, max_steps, save_every, val, done in grid:
        s = settings(max_steps=max_steps, save_every=save_every, val=list(val))
        a = step_actions(step, (step - 1) // SPE, done, pending, s)
        assert not a.save or a.flush  # losses are read (NaN check) before any checkpoint
        assert not a.stop or a.save  # a stopped run can be resumed from where it stopped
        assert not (a.stop and a.end_epoch)
        assert not a.validate or (a.end_epoch and val)
        assert a.stop == at_max_steps(step, s) == (max_steps is not None and step >= max_steps)
        assert a.end_epoch == (done and not a.stop)


def test_throughput_counts_clips_per_window_and_leaves_out_restarted_time():
    times = iter([0.0, 2.0, 3.0, 10.0, 14.0, 14.0])
    tp = Throughput(clock=lambda: next(times))  # the first window opens at 0 s
    tp.add(8)
    tp.add(8)
    assert tp.lap() == (2.0, 8.0)  # 16 clips from 0 s to 2 s
    tp.add(8)
    assert tp.lap() == (1.0, 8.0)  # the next window opened at 2 s
    tp.restart()  # 3 s to 10 s was validation: not training time
    tp.add(4)
    assert tp.lap() == (4.0, 1.0)
    seconds, rate = tp.lap()  # an empty window of no time: no division by zero
    assert (seconds, rate) == (0.0, 0.0)
