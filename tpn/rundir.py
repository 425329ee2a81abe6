"""What a training run keeps in RUN_DIR: checkpoints, RNG states, metrics, curves.

RUN_DIR/
  settings.json          resolved settings of the run
  step_00001234.pth      rolling checkpoints (epoch ends and every N steps; the last K kept)
  best.pth               weights with the best validation Top-1 (no optimizer state)
  metrics.jsonl          one line per step ("train") and per epoch ("epoch")
  curves.png             loss and accuracy curves, drawn at the end
  summary.json           best Top-1, time, clips/s
  tb/                    TensorBoard scalars, when tensorboard is installed

Every file is written atomically except metrics.jsonl, which is appended;
a resumed run first rewrites it without the lines past its checkpoint.
"""

from __future__ import annotations

import io
import json
import logging
import math
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import atomic_write_bytes

log = logging.getLogger("tpn.train")

CKPT_RE = re.compile(r"^step_(\d{8})\.pth$")
METRICS = "metrics.jsonl"


# ------------------------------------------------------------------ checkpoints


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pth"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Rolling checkpoints of a run, oldest first (by step)."""
    found = [(int(m.group(1)), p) for p in Path(run_dir).glob("step_*.pth") if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` rolling checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return []
    old = list_checkpoints(run_dir)[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old


def resume_checkpoint(path: str | Path) -> Path:
    """`--resume` target: a checkpoint file, or a run directory (its newest checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        ckpts = list_checkpoints(path)
        if not ckpts:
            raise FileNotFoundError(f"{path} holds no checkpoint (step_*.pth) to resume from")
        return ckpts[-1]
    raise FileNotFoundError(f"--resume {path}: no such run directory or checkpoint file")


# ------------------------------------------------------------------ RNG states


def rng_state(device: torch.device) -> dict[str, Any]:
    """torch (CPU and this GPU), numpy and python RNG states, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------ metrics


def _finite_or_none(value: Any) -> Any:
    # JSON has no NaN/inf: a diverged loss is written as null
    return None if isinstance(value, float) and not math.isfinite(value) else value


def read_metrics(run_dir: Path) -> list[dict]:
    """Records of metrics.jsonl; a torn last line (a kill mid-write) is skipped."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsWriter:
    """Appends JSONL records and mirrors scalars to TensorBoard when it is installed."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / METRICS
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tb = _tensorboard(Path(run_dir) / "tb") if tensorboard else None

    def truncate_after(self, step: int) -> None:
        """Drop the records past `step` (left by a run killed after its last checkpoint)."""
        keep = [r for r in read_metrics(self.path.parent) if r.get("step", 0) <= step]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        atomic_write_bytes(self.path, text.encode())

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        with self.path.open("a") as f:
            for r in records:
                f.write(json.dumps({k: _finite_or_none(v) for k, v in r.items()}) + "\n")
        if self.tb is not None:
            for r in records:
                self._to_tensorboard(r)

    def _to_tensorboard(self, r: dict) -> None:
        prefix = r["type"]  # "train" (per step) or "epoch"
        for k, v in r.items():
            if k not in ("type", "step", "epoch") and isinstance(v, (int, float)):
                self.tb.add_scalar(f"{prefix}/{k}", v, r["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional (pip install tensorboard)
        return None
    return SummaryWriter(log_dir=str(log_dir))


# ------------------------------------------------------------------ curves


def running_window(steps: int) -> int:
    """Steps the loss curve's running mean averages: a tenth of a short run, a fiftieth of a long one (1: none)."""
    if steps < 8:
        return 1
    return max(2, min(steps // 10, 100), steps // 50)


def plot_curves(records: list[dict], path: Path, title: str, num_classes: int | None = None) -> Path | None:
    """Training loss per step (with a running mean when there are enough steps) and validation accuracy per
    epoch, as one PNG; Top-5 only with more than 5 classes (with 5 or fewer it is always 100%)."""
    steps = [(r["step"], r["loss"]) for r in records if r.get("type") == "train" and r.get("loss") is not None]
    epochs = [r for r in records if r.get("type") == "epoch" and r.get("val_top1") is not None]
    if not steps:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    x, y = zip(*steps)
    ax_loss.plot(x, y, lw=0.6, alpha=0.4, label="per step")
    window = running_window(len(y))
    if window > 1:
        ax_loss.plot(x, _running_mean(list(y), window), lw=1.5, label=f"running mean of {window} steps")
    ax_loss.set(xlabel="step", ylabel="training loss", title=title)
    ax_loss.legend()
    if epochs:
        ax_acc.plot([r["epoch"] for r in epochs], [r["val_top1"] for r in epochs], "o-", label="Top-1")
        if num_classes is None or num_classes > 5:
            ax_acc.plot([r["epoch"] for r in epochs], [r["val_top5"] for r in epochs], "s--", label="Top-5")
        ax_acc.legend()
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out
