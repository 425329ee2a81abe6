"""`python -m benchmarks`: every benchmark in one run, sized for the machine, one report.

Runs the shard, data, train and infer benchmarks (each as its own
`python -m benchmarks.X` command, printed before it runs), then writes
`benchmarks/results/<date>-<device>.json` (all payloads plus the machine),
`<date>-<device>.md` (the tables, each under the command that produced it)
and `<date>-<device>-speedups.png`. Every figure is a ratio between
contenders measured in the same run. `--tiny` is a smoke run for CI.
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

BENCHES = ("shard", "data", "pipeline", "train", "infer")
# Arguments per benchmark: "full" fits a 2-core CPU box in minutes (a GPU box runs the GPU paths
# of the same scripts), "tiny" only proves the commands work.
ARGS = {
    "full": {
        "shard": ["--videos-per-class", "4", "--rounds", "3"],
        "data": [],
        "pipeline": [],
        "train": [],
        "infer": [],
    },
    "tiny": {
        "shard": ["--classes", "2", "--videos-per-class", "2", "--frames", "16", "--size", "96x64",
                  "--short-side", "64", "--rounds", "1"],
        "data": ["--tiny"],
        "pipeline": ["--tiny"],
        "train": ["--tiny"],
        "infer": ["--tiny"],
    },
}  # fmt: skip


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


def _f(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def shard_table(d: dict) -> list[str]:
    m = d["median"]
    return [
        "| | plain ffmpeg | pipeline.shard | shard / plain |",
        "|---|---|---|---|",
        f"| videos/s | {_f(d['plain_videos_per_s'])} | {_f(d['shard_videos_per_s'])} | |",
        f"| wall s (median) | {_f(m['plain_wall_s'])} | {_f(m['shard_wall_s'])} | **{_f(d['ratio_wall'], 3)}** (goal <= {d['goal_ratio_wall']}) |",
        f"| CPU s (median) | {_f(m['plain_cpu_s'])} | {_f(m['shard_cpu_s'])} | {_f(d['ratio_cpu'], 3)} |",
    ]  # fmt: skip


def data_table(d: dict) -> list[str]:
    rows = frames_table(d) + [""] + [
        "| clip | DALI clips/s | reference clips/s | DALI / reference (wall) | DALI / reference (CPU basis) "
        "| frames decoded per clip | decode limit clips/s | DALI % of decode limit (CPU basis) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        pct = r.get("dali_vs_limit_cpu")
        rows.append(
            f"| {r['config']} | {_f(r['dali_clips_per_s'], 1)} | {_f(r['reference_clips_per_s'], 1)} "
            f"| {_f(r['dali_vs_reference_wall'])}x | {_f(r['dali_vs_reference_cpu'])}x "
            f"| {_f(r['frames_decoded_per_clip'], 1)} | {_f(r['decode_limit_clips_per_s'], 1)} "
            f"| {'-' if pct is None else f'{100 * pct:.0f}%'} |"
        )
    return rows


def frames_table(d: dict) -> list[str]:
    """JPEG frame shards against VP9 shards of the same videos (same run, same cores)."""
    rows = ["| clip | VP9 clips/s | JPEG frames clips/s | frames / VP9 (wall) | frames / VP9 (CPU basis) "
            "| KB read per clip, VP9 | KB read per clip, frames | KB per video, VP9 | KB per video, frames |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in d["results"]:
        if "frames_clips_per_s" not in r:
            return []
        rows.append(
            f"| {r['config']} | {_f(r['dali_clips_per_s'], 1)} | {_f(r['frames_clips_per_s'], 1)} "
            f"| {_f(r['frames_vs_vp9_wall'])}x | {_f(r['frames_vs_vp9_cpu'])}x "
            f"| {_f(r['bytes_read_per_clip_vp9'] / 1e3, 0)} | {_f(r['bytes_read_per_clip_frames'] / 1e3, 0)} "
            f"| {_f(r['shard_bytes_per_video_vp9'] / 1e3, 0)} | {_f(r['shard_bytes_per_video_frames'] / 1e3, 0)} |"
        )
    return rows


def pipeline_table(d: dict) -> list[str]:
    rows = [f"{d['model']} on {d['device']}, batch {d['batch']}, step mode {d['step_mode']}"
            + (" (compiled)" if d.get("compiled") else ""), "",
            "| contender | clips/s | x in-memory training |", "|---|---|---|"]
    rows += [f"| {r['contender']} | {_f(r['clips_per_s'], 1)} | {_f(r['vs_in_memory'])}x |" for r in d["rows"]]
    return rows


def infer_table(d: dict) -> list[str]:
    rows = ["| model | batch | backend | clips/s | median latency ms | x PyTorch FP32 |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        rows.append(
            f"| {r['model']} | {r['batch']} | {r['backend']} | {_f(r['clips_per_s'])} | {_f(r['median_ms'], 1)} "
            f"| {_f(r.get('ratio_vs_torch_fp32'))}x |"
        )
    return rows + [""] + [f"- {g}" for g in d.get("goals", [])] + [f"- note: {n}" for n in d.get("notes", [])]


def generic_table(d: dict) -> list[str]:
    """Any payload with a list of flat row dicts (used for benchmarks without a dedicated table)."""
    rows = next((v for v in d.values() if isinstance(v, list) and v and isinstance(v[0], dict)), None)
    if rows is None:
        return ["```", json.dumps({k: v for k, v in d.items() if k != "machine"}, indent=1)[:3000], "```"]
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float, str, bool)) or v is None]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append("| " + " | ".join(_f(r.get(k)) if isinstance(r.get(k), float) else str(r.get(k)) for k in keys) + " |")
    return out + [f"- {g}" for g in d.get("goals", [])]


TABLES: dict[str, Callable[[dict], list[str]]] = {
    "shard": shard_table, "data": data_table, "pipeline": pipeline_table, "infer": infer_table, "train": generic_table,
}  # fmt: skip


GOAL_LOADER_VS_TRAIN = 1.5  # on a GPU: the loader feeds >= 1.5x what training consumes


def loader_vs_training(payloads: dict[str, dict]) -> dict | None:
    """DALI 8x8 clips/s over the fastest training mode's clips/s (the trained model reads 8x8 clips)."""
    data = next((r for r in payloads.get("data", {}).get("results", []) if r["config"] == "8x8"), None)
    rows = [r for r in payloads.get("train", {}).get("rows", []) if isinstance(r, dict) and r.get("clips_per_s")]
    if data is None or not rows:
        return None
    best = max(rows, key=lambda r: r["clips_per_s"])
    device = payloads["data"].get("settings", {}).get("device", "cpu")
    fmt, rate = max((("VP9", data["dali_clips_per_s"]), ("JPEG frames", data.get("frames_clips_per_s", 0.0))),
                    key=lambda t: t[1])
    return {"loader": f"DALI {device}, {fmt}, 8x8", "loader_clips_per_s": rate,
            "train": f"{best['model']} {best['mode']}, batch {best['batch']}", "train_clips_per_s": best["clips_per_s"],
            "ratio": rate / best["clips_per_s"], "goal": GOAL_LOADER_VS_TRAIN}  # fmt: skip


def loader_lines(d: dict | None) -> list[str]:
    if d is None:
        return []
    verdict = "met" if d["ratio"] >= d["goal"] else "NOT met"
    return ["", f"Loader vs training: {d['loader']} {d['loader_clips_per_s']:.1f} clips/s / {d['train']} "
            f"{d['train_clips_per_s']:.1f} clips/s = **{d['ratio']:.2f}x** (goal on a GPU >= {d['goal']}x: {verdict})"]


def speedups(payloads: dict[str, dict]) -> dict[str, float]:
    """The headline same-run ratios, for one bar chart."""
    out = {}
    if "shard" in payloads:
        out["plain ffmpeg / shard (wall)"] = 1 / payloads["shard"]["ratio_wall"]
    for r in payloads.get("data", {}).get("results", []):
        out[f"DALI / reference {r['config']}"] = r["dali_vs_reference_wall"]
    for r in payloads.get("infer", {}).get("rows", []):
        if r["batch"] == 1 and not r.get("tiny") and r["backend"] != "torch-fp32" and r.get("ratio_vs_torch_fp32"):
            out[f"{r['backend']} / torch fp32, b1"] = r["ratio_vs_torch_fp32"]
    for r in payloads.get("train", {}).get("rows", []):
        if isinstance(r, dict) and r.get("speedup") and r.get("mode"):
            out[f"train {r['mode']}"] = r["speedup"]
    return out


def report(stem: str, payloads: dict[str, dict], commands: dict[str, str], failed: list[str]) -> str:
    machine = common.machine_info()
    lines = [f"# Benchmarks {stem}", "", f"Machine: {machine['cpu']}, {machine['cores']} cores, GPU: {machine['gpu'] or 'none'}; "
             f"torch {machine['torch']}, CUDA {machine.get('cuda')}, cuDNN {machine.get('cudnn')}, DALI {machine['dali']}; "
             f"{machine['date']}.", ""]  # fmt: skip
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
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--tiny", action="store_true", help="smoke run: every benchmark at its smallest size")
    p.add_argument("--only", nargs="+", choices=BENCHES, default=list(BENCHES),
                   help="run only these benchmarks; their results join today's report for this device")
    p.add_argument("--results", type=Path, default=None,
                   help="output folder (default: benchmarks/results; also TPN_BENCH_RESULTS)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
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
    common.write_results(stem, {"commands": commands, "failed": failed, "benchmarks": payloads,
                                "loader_vs_training": loader_vs_training(payloads)})  # fmt: skip
    md = common.results_path(stem, ".md")
    md.write_text(report(stem, payloads, commands, failed) + "\n")
    ratios = speedups(payloads)
    if ratios:
        common.bar_plot(common.results_path(f"{stem}-speedups", ".png"), list(ratios), list(ratios.values()),
                        ylabel="x (same-run ratio)", title=f"speedups, {stem}")  # fmt: skip
    print(f"\nreport: {md}\ndata: {common.results_path(stem)}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
