"""RUN_DIR bookkeeping: rolling checkpoints, RNG states, metrics JSONL, curves, kill-safe saves."""

import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tpn import rundir

CPU = torch.device("cpu")


def touch_checkpoints(run: Path, steps: list[int]) -> None:
    for s in steps:
        (run / rundir.checkpoint_name(s)).write_bytes(b"x")


def test_checkpoints_are_listed_by_step_and_pruned_to_the_newest(tmp_path):
    touch_checkpoints(tmp_path, [100, 7, 2000, 35])
    (tmp_path / "best.pth").write_bytes(b"x")
    (tmp_path / ".step_00000999.pth.tmp-123-abcd").write_bytes(b"x")  # a temp file is never a checkpoint
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == [
        "step_00000007.pth",
        "step_00000035.pth",
        "step_00000100.pth",
        "step_00002000.pth",
    ]
    removed = rundir.prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in removed] == ["step_00000007.pth", "step_00000035.pth"]
    assert [p.name for p in rundir.list_checkpoints(tmp_path)] == ["step_00000100.pth", "step_00002000.pth"]
    assert (tmp_path / "best.pth").exists()
    assert rundir.prune_checkpoints(tmp_path, keep=0) == []  # 0 keeps everything


def test_resume_target_is_the_newest_checkpoint_of_a_run(tmp_path):
    touch_checkpoints(tmp_path, [10, 30, 20])
    assert rundir.resume_checkpoint(tmp_path).name == "step_00000030.pth"
    assert rundir.resume_checkpoint(tmp_path / "step_00000010.pth").name == "step_00000010.pth"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        rundir.resume_checkpoint(empty)
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        rundir.resume_checkpoint(tmp_path / "missing")


def draws() -> tuple:
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], np.random.randn()


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    rundir.seed_everything(123)
    draws()
    np.random.randn()  # leaves a cached gaussian in numpy's state
    torch.save({"rng": rundir.rng_state(CPU)}, tmp_path / "s.pth")
    first = draws()
    rundir.seed_everything(999)
    state = torch.load(tmp_path / "s.pth", weights_only=True)["rng"]
    rundir.set_rng_state(state, CPU)
    assert draws() == first


def test_metrics_are_appended_and_truncated_for_a_resume(tmp_path):
    w = rundir.MetricsWriter(tmp_path, tensorboard=False)
    w.write([{"type": "train", "step": s, "epoch": 0, "loss": 1.0 / s, "lr": 0.1} for s in range(1, 6)])
    w.write([{"type": "train", "step": 6, "epoch": 0, "loss": float("nan"), "lr": 0.1}])
    with (tmp_path / rundir.METRICS).open("a") as f:
        f.write('{"type": "train", "step": 7, "lo')  # a kill in the middle of a line
    records = rundir.read_metrics(tmp_path)
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[5]["loss"] is None  # NaN is not JSON: written as null
    w.truncate_after(3)
    assert [r["step"] for r in rundir.read_metrics(tmp_path)] == [1, 2, 3]
    lines = (tmp_path / rundir.METRICS).read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone too


def test_curves_png(tmp_path):
    records = [{"type": "train", "step": s, "loss": 2.0 / s} for s in range(1, 30)]
    records += [
        {"type": "epoch", "epoch": e, "step": 10 * e, "val_top1": 10.0 * e, "val_top5": 20.0 * e} for e in (1, 2)
    ]
    path = rundir.plot_curves(records, tmp_path / "curves.png", "demo")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert rundir.plot_curves([], tmp_path / "none.png", "demo") is None
    assert rundir.plot_curves(records, tmp_path / "few.png", "demo", num_classes=3).is_file()  # no Top-5 line


def test_the_running_mean_is_not_the_per_step_line_of_a_short_run():
    assert rundir.running_window(4) == 1  # too few steps: no running mean at all
    assert rundir.running_window(16) == 2 and rundir.running_window(99) == 9  # was 1 (= the per-step line) below 100
    assert rundir.running_window(1000) == 100 and rundir.running_window(100_000) == 2000


KILL_DURING_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    import tpn
    from tpn.checkpoint import save_checkpoint

    path = sys.argv[1]
    model = tpn.create_model("baseline_tiny_f8s4")
    save_checkpoint(path, model, progress={"step": 1})

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    torch.save = dying_save
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(path, model, progress={"step": 2})
    """
)


def test_a_kill_during_a_save_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / rundir.checkpoint_name(1)
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, str(path)], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["progress"] == {"step": 1}
    import tpn

    tpn.load_checkpoint(tpn.create_model("baseline_tiny_f8s4"), ckpt)  # complete and loadable
    # Whatever the kill left behind is a hidden temp file, never a checkpoint name.
    leftovers = [p.name for p in tmp_path.iterdir() if p != path]
    assert all(name.startswith(".") for name in leftovers)
    assert rundir.list_checkpoints(tmp_path) == [path]


def test_scalars_go_to_tensorboard(tmp_path):
    # tensorboard is in the test extra: this runs wherever the suite does
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    w = rundir.MetricsWriter(tmp_path)
    w.write([{"type": "train", "step": s, "epoch": 0, "loss": 3.0 - s, "lr": 0.1} for s in (1, 2)])
    w.write([{"type": "epoch", "epoch": 1, "step": 2, "val_top1": 40.0, "val_top5": 90.0}])
    w.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 2.0), (2, 1.0)]
    assert [(e.step, e.value) for e in events.Scalars("epoch/val_top1")] == [(2, 40.0)]
