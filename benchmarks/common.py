"""Shared benchmark helpers: where results go, what machine made them, CPU accounting.

Every benchmark writes `benchmarks/results/<name>.json` (atomically, with the
machine it ran on) and, when it has one, a PNG plot beside it.
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from pathlib import Path

from pipeline.io.files import atomic_write, atomic_write_json

# Goals that more than one benchmark, table or chart states (one definition each).
GOAL_TRAIN_SPEEDUP = 3.0  # the fastest training mode against fp32 eager, on an H100/H200
GOAL_LOADER_VS_TRAIN = 1.5  # on a GPU: the loader feeds >= 1.5x what the fastest training step consumes

# TPN_BENCH_RESULTS redirects every benchmark's output (smoke runs write outside the repo).
RESULTS = Path(os.environ.get("TPN_BENCH_RESULTS") or Path(__file__).resolve().parent / "results")


def cpu_has_native_bf16(flags: str | None = None) -> bool:
    """AVX512-BF16 or AMX: without them PyTorch emulates BF16 convolutions, far slower than FP32."""
    if flags is None:
        try:
            flags = next((ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), "")
        except OSError:
            flags = ""
    words = set(flags.split())
    return bool(words & {"avx512_bf16", "amx_bf16"})


def machine_info() -> dict:
    """CPU, cores, GPU and library versions: the context a number needs to mean anything."""
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "load_avg_1m": os.getloadavg()[0],
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
    }
    try:
        import nvidia.dali

        info["dali"] = nvidia.dali.__version__
    except ImportError:
        info["dali"] = None
    info["git_commit"] = git_commit()
    return info


def git_commit() -> str | None:
    """The checkout's commit (with '+dirty' when files differ from it), or None outside a git checkout:
    `export.marker.git_state`, the one reader of it, as one string."""
    from export.marker import git_state

    state = git_state()
    if state["commit"] is None:
        return None
    return state["commit"] + ("+dirty" if state["dirty"] else "")


def sync(device) -> None:
    """Wait for a GPU's queued work before reading a clock: `device` is a torch.device, or "gpu"/"cuda"."""
    import torch

    kind = device.type if isinstance(device, torch.device) else str(device)
    if kind in ("cuda", "gpu"):
        torch.cuda.synchronize()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def results_path(name: str, suffix: str = ".json") -> Path:
    return RESULTS / f"{name}{suffix}"


def invoking_command() -> str | None:
    """`python -m benchmarks.X ...` as typed, when a benchmark module runs as the program (else None)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name.startswith("benchmarks."):
        return None
    return shlex.join(["python", "-m", spec.name.removesuffix(".__main__"), *sys.argv[1:]])


def write_results(name: str, payload: dict) -> Path:
    """Write `payload` plus `machine_info()` (and the command that ran) to results/<name>.json atomically."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = results_path(name)
    context = {"machine": machine_info(), "command": invoking_command()}
    return atomic_write_json(path, {**context, **payload}, indent=1)


def _process_tree() -> dict[int, list[int]]:
    """ppid -> child pids, for every live process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def thread_schedstats(pid: int | None = None) -> dict[tuple[int, int], tuple[str, bool, int, int]]:
    """(pid, tid) -> (thread name, is a descendant process, ns running, ns runnable but waiting for a CPU).

    Over an interval, 1 - (running + waiting) / wall is the time a thread slept
    with nothing to do: pipeline stalls, as opposed to a busy machine.
    """
    root = os.getpid() if pid is None else pid
    tree, todo, stats = _process_tree(), [root], {}
    while todo:
        p = todo.pop()
        todo += tree.get(p, [])
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                run, wait = map(int, (task / "schedstat").read_text().split()[:2])
                name = (task / "comm").read_text().strip()
            except OSError:
                continue
            stats[(p, int(task.name))] = (name, p != root, run, wait)
    return stats


def tree_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of a process and all its live descendants (Linux /proc).

    Worker processes (torch DataLoader) and threads (DALI) are both counted,
    so loaders can be compared by CPU spent per clip, which a busy shared
    machine distorts far less than wall-clock throughput.
    """
    pid = os.getpid() if pid is None else pid
    tick = os.sysconf("SC_CLK_TCK")
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0.0)
        todo += children.get(p, [])
    return total


def machine_line(info: dict | None = None) -> str:
    """'<GPU or CPU, cores>, <date>': the context every chart title carries."""
    m = machine_info() if info is None else info
    where = m.get("gpu") or f"{m.get('cpu', 'unknown CPU')}, {m.get('cores', '?')} cores, no GPU"
    return f"{where}, {str(m.get('date', '?'))[:10]}"


def bar_plot(
    path: Path,
    labels: list[str],
    values: list[float],
    *,
    errors: list[tuple[float, float]] | None = None,
    ylabel: str = "",
    title: str = "",
) -> Path:
    """Horizontal bars (long labels stay readable), optional (low, high) error bars, this machine and
    date under the title; saved as PNG via temp + rename. `ylabel` names the measured axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.45 * len(labels)), layout="constrained")
    xerr = None if errors is None else [[lo for lo, _ in errors], [hi for _, hi in errors]]
    colors = ["#888888"] + ["#3b75af"] * (len(labels) - 1)  # the first bar is the baseline
    bars = ax.barh(labels, values, xerr=xerr, capsize=5, color=colors)
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=4, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(ylabel)
    ax.set_xlim(0, 1.2 * max(values + [hi + v for v, (_, hi) in zip(values, errors or [(0, 0)] * len(values))]))
    ax.set_title(f"{title}\n{machine_line()}" if title else machine_line(), fontsize=9)
    return save_figure(fig, path, dpi=100)


def save_figure(fig, path: str | os.PathLike, dpi: int, **savefig: object) -> Path:
    """Save a matplotlib figure as PNG via temp + rename (extra `savefig` options pass through), then close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, **savefig))
    finally:
        plt.close(fig)


def endless(loader):
    """A ClipLoader's batches epoch after epoch (epochs 0, 1, 2, ...), forever."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1
