"""Markdown tables of benchmark payloads (pure: a payload dict in, lines out).

Used by `python -m benchmarks` (the per-run report) and `benchmarks.report`
(the README's generated blocks), so one result file reads the same in both.
"""

from __future__ import annotations

from benchmarks.charts import row_problem

# Modes whose names alone would mislead a reader: what PyTorch actually did in them on a GPU.
MODE_NOTES = {
    "fp32-eager": "PyTorch defaults: TF32 convolutions",
    "fp32-notf32-eager": "strict fp32, for reference",
}


def _f(v, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _rate(v) -> str:
    """1 decimal from 10 up, else 2: keeps three significant figures on a GPU and on a 2-core CPU."""
    return "-" if v is None else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"


def _pct(v, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def _name(r: dict, text: str) -> str:
    """A row's first cell; a row that is not valid (see `charts.row_problem`) says why (charts leave it out)."""
    problem = row_problem(r)
    return f"{text} (**invalid**: {problem})" if problem else str(text)


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
    frames = frames_table(d)
    rows = (frames + [""] if frames else []) + [
        "| clip | DALI clips/s | reference clips/s | DALI / reference (wall) | DALI / reference (CPU basis) "
        "| frames decoded per clip | decode limit clips/s | DALI % of decode limit (CPU basis) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in d["results"]:
        rows.append(
            f"| {_name(r, r['config'])} | {_f(r['dali_clips_per_s'], 1)} | {_f(r['reference_clips_per_s'], 1)} "
            f"| {_f(r['dali_vs_reference_wall'])}x | {_f(r['dali_vs_reference_cpu'])}x "
            f"| {_f(r['frames_decoded_per_clip'], 1)} | {_f(r['decode_limit_clips_per_s'], 1)} "
            f"| {_pct(r.get('dali_vs_limit_cpu'), 0)} |"
        )
    return rows


def frames_table(d: dict) -> list[str]:
    """JPEG frame shards against VP9 shards of the same videos (same run, same cores)."""
    rows = ["| clip | VP9 clips/s | JPEG frames clips/s | frames / VP9 (wall) | frames / VP9 (CPU basis) "
            "| KB read per clip, VP9 | KB read per clip, frames | KB per video, VP9 | KB per video, frames |",
            "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in d["results"]:
        if "frames_clips_per_s" not in r:
            return []
        rows.append(
            f"| {_name(r, r['config'])} | {_f(r['dali_clips_per_s'], 1)} | {_f(r['frames_clips_per_s'], 1)} "
            f"| {_f(r['frames_vs_vp9_wall'])}x | {_f(r['frames_vs_vp9_cpu'])}x "
            f"| {_f(r['bytes_read_per_clip_vp9'] / 1e3, 0)} | {_f(r['bytes_read_per_clip_frames'] / 1e3, 0)} "
            f"| {_f(r['shard_bytes_per_video_vp9'] / 1e3, 0)} | {_f(r['shard_bytes_per_video_frames'] / 1e3, 0)} |"
        )
    return rows


def pipeline_table(d: dict) -> list[str]:
    rows = [f"{d['model']} on {d['device']}, batch {d['batch']}, step mode {d['step_mode']}"
            + (" (compiled)" if d.get("compiled") else ""), "",
            "| contender | clips/s | x in-memory training |", "|---|---|---|"]  # fmt: skip
    rows += [f"| {r['contender']} | {_f(r['clips_per_s'], 1)} | {_f(r['vs_in_memory'])}x |" for r in d["rows"]]
    return rows


def frames_goal_lines(d: dict) -> list[str]:
    """The frame-shard goals on a 2-core CPU: >= 2.5x VP9 for 8x8, >= 1.5x for 32x2 (wall, same run)."""
    goals = {"8x8": 2.5, "32x2": 1.5}
    lines = []
    for r in d["results"]:
        if r["config"] in goals and "frames_vs_vp9_wall" in r:
            ratio, goal = r["frames_vs_vp9_wall"], goals[r["config"]]
            lines.append(f"- frame shards >= {goal}x VP9 at {r['config']} (wall): {ratio:.2f}x -> "
                         + ("met" if ratio >= goal else "NOT met"))
    return lines


def scale_table(d: dict) -> list[str]:
    """Index open time and resident bytes per sample; loader clips/s from disk and from S3 on loopback."""
    rows = ["| samples | open s | open + read every per-sample number s | resident bytes per sample | index file bytes per sample |",
            "|---|---|---|---|---|"]  # fmt: skip
    rows += [f"| {r['samples']:,} | {_f(r['open_s'], 3)} | {_f(r['open_and_touch_s'], 3)} "
             f"| {_f(r['rss_bytes_per_sample'], 1)} | {_f(r['file_bytes_per_sample'], 1)} |" for r in d.get("index", [])]
    if "python_records_bytes_per_sample" in d:
        n = min(r["samples"] for r in d["index"])
        rows += ["", f"The previous index (one Python record per sample) held "
                     f"{_f(d['python_records_bytes_per_sample'], 0)} bytes per sample at {n:,} samples."]
    st = d.get("storage")
    if st:
        rows += ["", "| frame shards, 8x8 clips at 224 | clips/s |", "|---|---|"]
        rows += [f"| {k} | {_f(v, 1)} |" for k, v in st["clips_per_s"].items()]
        rows += ["", f"- loader from S3 / plain range-read loop of the same byte ranges: "
                     f"{_f(st['loader_vs_range_loop'])}x (goal >= 0.8); S3 on loopback / local disk: {_f(st['s3_vs_local'])}x"]
    return rows


def goal_lines(d: dict) -> list[str]:
    """The payload's goal verdicts and notes as bullets (they were judged in the run itself)."""
    return [f"- {g}" for g in d.get("goals", [])] + [f"- note: {n}" for n in d.get("notes", [])]


def infer_table(d: dict) -> list[str]:
    rows = ["| model | batch | backend | clips/s | median latency ms | x PyTorch FP32 |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        rows.append(
            f"| {_name(r, r['model'])} | {r['batch']} | {r['backend']} | {_f(r['clips_per_s'])} | {_f(r['median_ms'], 1)} "
            f"| {_f(r.get('ratio_vs_torch_fp32'))}x |"
        )
    return rows + [""] + goal_lines(d)


def train_table(d: dict) -> list[str]:
    """One row per training mode; the speedup is against fp32-eager of the same run."""
    base = next((r["mode"] for r in d["rows"] if r.get("speedup") == 1.0), "fp32-eager")
    rows = [f"| mode | clips/s | step ms | TFLOP/s | MFU | x {base} |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        note = f" ({MODE_NOTES[r['mode']]})" if r["mode"] in MODE_NOTES and r.get("device") == "cuda" else ""
        rows.append(
            f"| {_name(r, r['mode'] + note)} | {_rate(r['clips_per_s'])} | {_f(r['median_step_ms'], 1)} "
            f"| {_rate(r.get('tflops_per_s'))} | {_pct(r.get('mfu'))} | {_f(r.get('speedup'))}x |"
        )
    return rows


def loader_variants_table(d: dict) -> list[str]:
    base = next((r["label"] for r in d["rows"] if r.get("vs_default") == 1.0), "the first row")
    rows = [f"| ClipLoader configuration | clips/s | x {base} |", "|---|---|---|"]
    rows += [f"| {_name(r, r['label'])} | {_f(r['clips_per_s'], 1)} | {_f(r['vs_default'])}x |" for r in d["rows"]]
    return rows


def precision_table(d: dict, model: str, backends: tuple[str, str] = ("torch-fp32", "torch-bf16")) -> list[str]:
    """Two backends of one model side by side per batch (the rows where both ran), with their ratio."""
    by = {(r["model"], r["batch"], r["backend"]): r for r in d["rows"]}
    a, b = backends
    rows = [f"| model | batch | {a.replace('-', ' ')} clips/s | {b.replace('-', ' ')} clips/s "
            f"| {b.split('-')[-1]} / {a.split('-')[-1]} |", "|---|---|---|---|---|"]  # fmt: skip
    for batch in sorted({r["batch"] for r in d["rows"] if r["model"] == model}):
        ra, rb = by.get((model, batch, a)), by.get((model, batch, b))
        if ra and rb:
            rows.append(f"| {model} | {batch} | {_f(ra['clips_per_s'], 1)} | {_f(rb['clips_per_s'], 1)} "
                        f"| {_f(rb['clips_per_s'] / ra['clips_per_s'])}x |")  # fmt: skip
    return rows

