"""`python -m benchmarks`: every benchmark in one run, sized for the machine, one report.

Runs the shard, data, feed, train and infer benchmarks (each as its own
`python -m benchmarks.X` command, printed before it runs), then writes
`benchmarks/results/<date>-<device>.json` (all payloads plus the machine),
and `<date>-<device>.md` (the tables, each under the command that produced it).
Every figure is a ratio between contenders measured in the same run. `--tiny`
is a smoke run for CI. `python -m benchmarks report` regenerates the README's
performance tables and charts from the result files (see `benchmarks.report`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from benchmarks import common
from benchmarks.rows import valid_rows
from benchmarks.tables import (
    goal_lines,
    infer_table,
    loaders_goal_lines,
    loaders_table,
    feed_table,
    shard_table,
    train_table,
)

BENCHES = ("shard", "data", "feed", "train", "infer")
# Arguments per benchmark: "full" fits a 2-core CPU box in minutes (a GPU box runs the GPU paths
# of the same scripts), "tiny" only proves the commands work.
ARGS = {
    "full": {
        "shard": ["--videos-per-class", "4", "--rounds", "3"],
        # the camera-like synthetic set the feed benchmark and benchmarks/gpu.sh's later stages share
        # (python -m benchmarks.data alone reads real footage, which needs the [bench] extra)
        "data": ["--content", "synthetic"],
        "feed": [],
        "train": [],
        "infer": [],
    },
    "tiny": {
        "shard": [
            "--classes",
            "2",
            "--videos-per-class",
            "2",
            "--frames",
            "16",
            "--size",
            "96x64",
            "--short-side",
            "64",
            "--rounds",
            "1",
        ],
        "data": ["--tiny"],
        "feed": ["--tiny"],
        "train": ["--tiny"],
        "infer": ["--tiny"],
    },
}


def device_slug() -> str:
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name().lower()
        m = re.search(r"(h100|h200|a100|l40s?|b200|gh200|rtx ?\w+|v100|t4)", name)
        return re.sub(r"\W+", "", m.group(1)) if m else "gpu"
    return f"cpu{len(os.sched_getaffinity(0))}"


def command(bench: str, size: str, name: str) -> list[str]:
    return [sys.executable, "-m", f"benchmarks.{bench}", *ARGS[size][bench], "--name", name]


def printable(argv: list[str]) -> str:
    return shlex.join(argv).replace(sys.executable, "python")


# ------------------------------------------------------------------ tables


TABLES: dict[str, Callable[[dict], list[str]]] = {
    "shard": shard_table,
    "data": lambda d: [*loaders_table(d), "", *loaders_goal_lines(d)],
    "feed": feed_table,
    "infer": infer_table,
    "train": lambda d: [*train_table(d), *goal_lines(d)],
}


def loader_vs_training(payloads: dict[str, dict]) -> dict | None:
    """The faster shard format's 8x8 ClipLoader clips/s over the fastest training mode's clips/s."""
    data = next((r for r in payloads.get("data", {}).get("results", []) if r["config"] == "8x8"), None)
    rows = [r for r in valid_rows(payloads.get("train", {}).get("rows", [])) if r.get("clips_per_s")]
    if data is None or not rows:
        return None
    best = max(rows, key=lambda r: r["clips_per_s"])
    device = payloads["data"].get("settings", {}).get("device", "cpu")
    fmt, rate = max(
        (("VP9", data.get("vp9_clips_per_s", 0.0)), ("JPEG frames", data.get("frames_clips_per_s", 0.0))),
        key=lambda t: t[1],
    )
    return {
        "loader": f"ClipLoader {device}, {fmt}, 8x8",
        "loader_clips_per_s": rate,
        "train": f"{best['model']} {best['mode']}, batch {best['batch']}",
        "train_clips_per_s": best["clips_per_s"],
        "ratio": rate / best["clips_per_s"],
        "goal": common.GOAL_LOADER_VS_TRAIN,
    }


def loader_lines(d: dict | None) -> list[str]:
    if d is None:
        return []
    verdict = "met" if d["ratio"] >= d["goal"] else "NOT met"
    return [
        "",
        f"Loader vs training: {d['loader']} {d['loader_clips_per_s']:.1f} clips/s / {d['train']} "
        f"{d['train_clips_per_s']:.1f} clips/s = **{d['ratio']:.2f}x** (goal on a GPU >= {d['goal']}x: {verdict})",
    ]


def report(stem: str, payloads: dict[str, dict], commands: dict[str, str], failed: list[str]) -> str:
    machine = common.machine_info()
    lines = [
        f"# Benchmarks {stem}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu'] or 'none'}; "
        f"torch {machine['torch']}, CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')}, DALI {machine['dali']}; "
        f"{machine['date']}.",
        "",
    ]
    for bench in BENCHES:
        if bench not in commands:
            continue
        lines += [f"## {bench}", "", f"`{commands[bench]}`", ""]
        if bench in payloads:
            lines += TABLES[bench](payloads[bench])
            if bench == "train":
                lines += loader_lines(loader_vs_training(payloads))
        else:
            lines.append("did not complete (see the command's output)")
        lines.append("")
    if failed:
        lines.append(f"Failed: {', '.join(failed)}")
    return "\n".join(lines)


# --------------------------------------------------------------------- run


def previous(stem: str) -> tuple[dict, dict, list]:
    """Payloads of an earlier `--only` run today on this device, so partial runs add up to one report."""
    path = common.results_path(stem)
    if not path.exists():
        return {}, {}, []
    old = json.loads(path.read_text())
    return old.get("benchmarks", {}), old.get("commands", {}), []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tiny", action="store_true", help="smoke run: every benchmark at its smallest size")
    p.add_argument(
        "--only",
        nargs="+",
        choices=BENCHES,
        default=list(BENCHES),
        help="run only these benchmarks; their results join today's report for this device",
    )
    p.add_argument(
        "--results", type=Path, default=None, help="output folder (default: benchmarks/results; also TPN_BENCH_RESULTS)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["report"]:  # `python -m benchmarks report`: the README's tables and charts
        from benchmarks import report as readme_report

        return readme_report.main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.results is not None:
        os.environ["TPN_BENCH_RESULTS"] = str(args.results.resolve())
        common.RESULTS = args.results.resolve()
    size = "tiny" if args.tiny else "full"
    stem = f"{dt.date.today().isoformat()}-{device_slug()}{'-tiny' if args.tiny else ''}"
    payloads, commands, failed = previous(stem) if set(args.only) != set(BENCHES) else ({}, {}, [])
    for bench in args.only:
        argv_b = command(bench, size, f"{stem}-{bench}")
        commands[bench] = printable(argv_b)
        print(f"\n== {bench}: {commands[bench]}", flush=True)
        payloads.pop(bench, None)
        if subprocess.run(argv_b, env=os.environ).returncode != 0:
            failed.append(bench)
            continue
        payloads[bench] = json.loads(common.results_path(f"{stem}-{bench}").read_text())
    common.write_results(
        stem,
        {
            "commands": commands,
            "failed": failed,
            "benchmarks": payloads,
            "loader_vs_training": loader_vs_training(payloads),
        },
    )
    md = common.results_path(stem, ".md")
    md.write_text(report(stem, payloads, commands, failed) + "\n")
    print(f"\nreport: {md}\ndata: {common.results_path(stem)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
