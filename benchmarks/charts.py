"""One chart per question, from benchmark result payloads.

Each `*_chart` function is pure: it picks what may be drawn from one run's
payload (plus, for the loader, the training rate of the same machine) and
returns a `Chart`; `draw` is the only place that touches matplotlib. Rules
the selection enforces:

- A figure marked invalid is never drawn: a row carrying `"invalid": "why"`,
  a payload's `"invalid": {"series": "why"}`, or an entry of `KNOWN_INVALID`
  for files written before the flag existed.
- A ratio is computed only between rows of one payload (one run).
- Figures of two payloads share an axis only when both ran on the same
  machine (`same_machine`), and then as absolute rates, never as a ratio.
- Every title names the machine and the date of the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.common import GOAL_LOADER_VS_TRAIN, GOAL_TRAIN_SPEEDUP, machine_line, save_figure
from benchmarks.rows import LOADER_LABELS, valid_rows

# Result files measured before payloads could flag figures: stem -> {series: why it is invalid}.
KNOWN_INVALID: dict[str, dict[str, str]] = {
    "2026-11-25-h100-data": {
        "reference": "warm-up of 2 batches while 16 DataLoader workers held up to 32 batches ready",
    },
}


class ChartError(ValueError):
    """The payloads cannot be drawn together (e.g. two machines on one axis)."""


@dataclass(frozen=True)
class Series:
    name: str
    values: list[float | None]  # one per category; None = not measured for that category


@dataclass(frozen=True)
class RefLine:
    value: float
    label: str
    goal: bool = False  # drawn dashed red: the line to reach


@dataclass(frozen=True)
class Chart:
    title: str
    axis: str  # what the bars measure, with the unit
    categories: list[str]  # one bar group each, top to bottom
    series: list[Series]
    lines: list[RefLine] = field(default_factory=list)
    annotations: list[str] | None = None  # one text per category, after the value on its last bar
    log: bool = False
    footnote: str = ""


# ---------------------------------------------------------------- selection


def machine_label(payload: dict) -> str:
    return machine_line(payload.get("machine", {}))


def same_machine(a: dict, b: dict) -> bool:
    ma, mb = a.get("machine", {}), b.get("machine", {})
    return all(ma.get(k) == mb.get(k) for k in ("gpu", "cpu", "cores", "platform"))


def invalid_series(stem: str, payload: dict) -> dict[str, str]:
    """Series of this result file that must not be drawn, with the reason."""
    return {**KNOWN_INVALID.get(stem, {}), **payload.get("invalid", {})}


def fastest_training(train: dict) -> dict:
    rows = [r for r in valid_rows(train.get("rows", [])) if r.get("clips_per_s")]
    if not rows:
        raise ChartError("the training result has no valid rows")
    return max(rows, key=lambda r: r["clips_per_s"])


def loader_chart(loader: dict, train: dict) -> Chart:
    """Loader configurations (clips/s) against the fastest training step of the same machine."""
    if not same_machine(loader, train):
        raise ChartError(
            f"loader ({machine_label(loader)}) and training ({machine_label(train)}) ran on "
            "different machines: their rates cannot share an axis"
        )
    rows = valid_rows(loader["rows"])
    best = fastest_training(train)
    rate = best["clips_per_s"]
    return Chart(
        title=f"Clip loading against the training rate ({loader.get('clip', 'clips')})\n{machine_label(loader)}",
        axis="clips/s (higher is better)",
        categories=[r["label"] for r in rows],
        series=[
            Series(f"{codec.upper()} shards", [r["clips_per_s"] if r.get("codec") == codec else None for r in rows])
            for codec in dict.fromkeys(r.get("codec", "?") for r in rows)
        ],
        lines=[
            RefLine(rate, f"training, {best['mode']} batch {best['batch']}: {rate:.0f} clips/s"),
            RefLine(
                GOAL_LOADER_VS_TRAIN * rate,
                f"goal {GOAL_LOADER_VS_TRAIN}x training: {GOAL_LOADER_VS_TRAIN * rate:.0f} clips/s",
                goal=True,
            ),
        ],
        footnote="loader and training measured in separate runs on this machine",
    )


def train_chart(train: dict) -> Chart:
    """Training modes (clips/s) with the goal line at 3x the fp32-eager rate of the same run."""
    rows = valid_rows(train["rows"])
    base = next((r for r in rows if r.get("speedup") == 1.0), None)
    lines = []
    if base is not None:
        goal = GOAL_TRAIN_SPEEDUP * base["clips_per_s"]
        lines.append(RefLine(goal, f"goal {GOAL_TRAIN_SPEEDUP:g}x {base['mode']}: {goal:.0f} clips/s", goal=True))
    first = rows[0]
    return Chart(
        title=f"Training step by mode ({first['model']}, batch {first['batch']})\n{machine_label(train)}",
        axis="training clips/s (higher is better)",
        categories=[r["mode"] for r in rows],
        series=[Series("clips/s", [r["clips_per_s"] for r in rows])],
        lines=lines,
        annotations=[f"({r['speedup']:.2f}x {base['mode']})" if r.get("speedup") and base else "" for r in rows],
    )


def infer_chart(infer: dict, model: str, backends: list[str] | None = None) -> Chart:
    """Inference clips/s per batch size, one bar per backend; ratios only within a batch of this run."""
    rows = [
        r for r in valid_rows(infer["rows"]) if r["model"] == model and (backends is None or r["backend"] in backends)
    ]
    if not rows:
        raise ChartError(f"no inference rows for {model}")
    batches = sorted({r["batch"] for r in rows})
    names = list(dict.fromkeys(r["backend"] for r in rows))
    by = {(r["batch"], r["backend"]): r["clips_per_s"] for r in rows}
    spread = max(by.values()) / min(by.values())
    return Chart(
        title=f"Inference by backend and batch ({model})\n{machine_label(infer)}",
        axis="clips/s (higher is better)" + (", log scale" if spread > 20 else ""),
        categories=[f"batch {b}" for b in batches],
        series=[Series(n, [by.get((b, n)) for b in batches]) for n in names],
        log=spread > 20,
    )


def loaders_chart(data: dict) -> Chart:
    """`benchmarks.data`: every contender's clips/s per clip shape, and the JPEG decode limit, one run."""
    rows = valid_rows(data["results"])
    series = [
        Series(LOADER_LABELS[w], [r.get(f"{w}_clips_per_s") for r in rows]) for w in data["settings"]["contenders"]
    ]
    series.append(Series("JPEG decode limit (OpenCV)", [r.get("limit_opencv_clips_per_s") for r in rows]))
    s = data.get("settings", {})
    return Chart(
        title=f"Training clips (224, colour jitter) by loader ({data.get('videos', '?')} "
        f"{s.get('content', '')} videos, "
        f"batch {s.get('batch_size', '?')}, {s.get('workers', '?')} cores)\n{machine_label(data)}",
        axis="clips/s (higher is better)",
        categories=[r["config"] for r in rows],
        series=series,
    )


# ------------------------------------------------------------------ drawing

COLORS = ["#3b75af", "#d9822b", "#4c9a2a", "#8e5ea2", "#c44e52", "#17becf", "#888888", "#bcbd22"]  # one per series
MORE_COLORS = [
    "#1f3b63",
    "#8c4a12",
    "#2b5a17",
    "#5a3a69",
    "#7a2f32",
    "#0e6f7a",
    "#4d4d4d",
    "#6e6e14",
    "#9ec3e6",
    "#f2b57f",
    "#a6d98c",
    "#c9a8d9",
]  # darker and lighter shades, for charts with more series


def series_colors(n: int) -> list[str]:
    """A distinct colour for each of `n` series (one colour never stands for two contenders)."""
    palette = COLORS + MORE_COLORS
    if n > len(palette):
        raise ChartError(f"{n} series in one chart: at most {len(palette)} can have distinct colours; split the chart")
    return palette[:n]


def draw(chart: Chart, path: Path) -> Path:
    """Horizontal grouped bars (labels stay readable at any length), reference lines, PNG via temp + rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn = [s for s in chart.series if any(v is not None for v in s.values)]
    slots = _slots(chart, drawn)
    per_group = max(1, *(len(s) for s in slots))
    height = 0.8 / per_group
    groups = len(chart.categories)
    # constrained layout keeps the legend, placed outside below the axes, clear of bars and labels
    fig, ax = plt.subplots(figsize=(9, 1.8 + 0.3 * groups * per_group + 0.2 * len(chart.lines)), layout="constrained")
    colors = series_colors(len(drawn))
    for i, s in enumerate(drawn):
        at = [g for g in range(groups) if i in slots[g]]
        ys = [g + (slots[g].index(i) - (len(slots[g]) - 1) / 2) * height for g in at]
        xs = [s.values[g] for g in at]
        bars = ax.barh(ys, xs, height=height * 0.9, color=colors[i], label=s.name if len(drawn) > 1 else None)
        ax.bar_label(bars, labels=[_bar_text(chart, g, i, slots, x) for g, x in zip(at, xs)], padding=3, fontsize=8)
    for line in chart.lines:
        ax.axvline(
            line.value,
            color="#c44e52" if line.goal else "#333333",
            linestyle="--" if line.goal else "-",
            linewidth=1.2,
            label=line.label,
        )
    ax.set_yticks(range(groups), chart.categories, fontsize=9)
    ax.invert_yaxis()  # first category on top, as in the table
    ax.set_xlabel(chart.axis + (f"\n{chart.footnote}" if chart.footnote else ""), fontsize=9)
    top = max([x for s in drawn for x in s.values if x is not None] + [ln.value for ln in chart.lines])
    if chart.log:
        ax.set_xscale("log")
    else:
        ax.set_xlim(0, 1.22 * top)  # room for the value labels
    ax.set_title(chart.title, fontsize=10)
    if len(drawn) > 1 or chart.lines:
        fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return _save(fig, path)


def _bar_text(chart: Chart, group: int, series: int, slots: list[list[int]], value: float) -> str:
    """The value, plus the category's annotation on its last bar."""
    note = chart.annotations[group] if chart.annotations and slots[group][-1] == series else ""
    return f"{_num(value)}  {note}" if note else _num(value)


def _slots(chart: Chart, drawn: list[Series]) -> list[list[int]]:
    """Per category, the indices of the series that have a bar there (bars share a group only when measured)."""
    return [[i for i, s in enumerate(drawn) if s.values[g] is not None] for g in range(len(chart.categories))]


def _num(x: float) -> str:
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 1 else f"{x:.2f}"


def _save(fig, path: Path) -> Path:
    return save_figure(fig, path, dpi=110, bbox_inches="tight")  # "tight" keeps the legend below the axes
