"""Markdown tables of benchmark payloads (pure: a payload dict in, lines out).

Used by `python -m benchmarks` (the per-run report) and `benchmarks.report`
(the README's generated blocks), so one result file reads the same in both.
"""

from __future__ import annotations

from benchmarks.rows import LOADER_LABELS, row_problem

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
    """A row's first cell; a row that is not valid (see `rows.row_problem`) says why (charts leave it out)."""
    problem = row_problem(r)
    return f"{text} (**invalid**: {problem})" if problem else str(text)


def shard_table(d: dict) -> list[str]:
    m = d["median"]
    return [
        "| | plain ffmpeg | pipeline.shard | shard / plain |",
        "|---|---|---|---|",
        f"| videos/s | {_f(d['plain_videos_per_s'])} | {_f(d['shard_videos_per_s'])} | |",
        f"| wall s (median) | {_f(m['plain_wall_s'])} | {_f(m['shard_wall_s'])} | "
        f"**{_f(d['ratio_wall'], 3)}** (goal <= {d['goal_ratio_wall']}) |",
        f"| CPU s (median) | {_f(m['plain_cpu_s'])} | {_f(m['shard_cpu_s'])} | {_f(d['ratio_cpu'], 3)} |",
        *(_ray_rows(d) if "ray_scaling" in d else []),
        *(coordination_rows(d["coordination"]) if "coordination" in d else []),
    ]


def coordination_rows(c: dict) -> list[str]:
    """`benchmarks.shard --coordination`: the coordinator's CPU per video against the encodes', on footage."""
    lines = [
        "",
        f"Real footage ({', '.join(map(str, next(iter(c['rows'].values()))['videos']))} videos, {c['workers']} "
        "workers): CPU seconds per video, and the encoding cores one coordinator keeps busy",
        "",
        "| engine, codec | encode | coordinator idle | coordinator, whole run | coordinator, per added video "
        "(before idle out) | coordinator, fixed | cores (goal) |",
        "|---|---|---|---|---|---|---|",
    ]
    unresolved = False
    for name, r in c["rows"].items():
        resolved = r.get("slope_resolved", True)
        unresolved |= not resolved
        met = "met" if r["cores"] >= r["goal_cores"] else ("**missed**" if resolved else "not shown")
        with_idle = r.get("coordinator_cpu_s_per_video_marginal_with_idle")
        slope = f"{1000 * r['coordinator_cpu_s_per_video_marginal']:.3f} ms" if resolved else "within noise"
        if with_idle is not None:
            slope += f" ({1000 * with_idle:.3f} ms)"
        cores = f"**{r['cores']:.0f}**" if resolved else f">= {r['cores']:.0f} (whole run)"
        idle = r.get("coordinator_idle_cpu_s_per_s")
        lines.append(
            f"| {name.replace('-', ', ')} | {r['encode_cpu_s_per_video']:.3f} | "
            f"{'' if idle is None else f'{1000 * idle:.1f} ms/s'} | "
            f"{1000 * r['coordinator_cpu_s_per_video']:.2f} ms ({r['cores_whole_run']:.0f} cores) | "
            f"{slope} | {r['coordinator_fixed_cpu_s']:.2f} s | {cores} (>= {r['goal_cores']}: {met}) |"
        )
    lines += [
        "",
        "idle: the coordinator's CPU per second of waiting with no video in flight, measured before each run; "
        "per added video: the slope between the two runs once idle x wall time is taken out (in brackets, "
        "before); cores: encode x (1 - idle) / per added video",
    ]
    if unresolved:
        lines += [
            "",
            "within noise: the larger run's coordinator used less than 0.1 CPU s more than the smaller one's "
            "(idle part taken out), below what identical runs differ by; the whole run's cores (its fixed cost "
            "included) are then a lower bound",
        ]
    return lines


def _ray_rows(d: dict) -> list[str]:
    """`--engine ray` on local clusters of one-CPU nodes (wall only: its encodes run in the nodes' processes)."""
    m = d["median"]
    same = "same bytes as the local engine" if d["ray_same_bytes"] else "**bytes differ from the local engine**"
    return [
        "",
        "| --engine ray (nodes of 1 CPU) | 1 node | 2 nodes | ratio |",
        "|---|---|---|---|",
        f"| videos/s | {_f(d['ray1_videos_per_s'])} | {_f(d['ray2_videos_per_s'])} | "
        f"**{_f(d['ray_scaling'], 3)}** 2 / 1 node (goal >= {d['goal_ray_scaling']}) |",
        f"| wall s (median) | {_f(m['ray1_wall_s'])} | {_f(m['ray2_wall_s'])} | "
        f"**{_f(d['ray_vs_local_wall'], 3)}** 2 nodes / local engine on 2 workers "
        f"(goal <= {d['goal_ray_vs_local_wall']}); {same} |",
    ] + [
        "",
        "per round: 2 / 1 node "
        + ", ".join(f"{r['ray1_wall_s'] / r['ray2_wall_s']:.2f}" for r in d["rounds"])
        + "; ray / local "
        + ", ".join(f"{r['ray2_wall_s'] / r['shard_wall_s']:.2f}" for r in d["rounds"]),
    ]


LOADER_GOALS = {
    "frames_vs_rawframes": (2.0, "frame shards / rawframes"),
    "frames_vs_limit": (0.7, "frame shards / JPEG decode limit (OpenCV)"),
    "vp9_vs_decord": (1.0, "VP9 shards / decord"),
}  # at 8x8


def loaders_table(d: dict) -> list[str]:
    """`benchmarks.data`: clips/s of every contender per clip shape, the decode limits, per-round ratios."""
    rows = d["results"]
    head = "| contender | " + " | ".join(r["config"] for r in rows) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]
    for who in d["settings"]["contenders"]:
        cells = [_rate(r.get(f"{who}_clips_per_s")) if f"{who}_clips_per_s" in r else "failed" for r in rows]
        lines.append(f"| {LOADER_LABELS[who]} | " + " | ".join(cells) + " |")
    for dec, label in (("opencv", "OpenCV"), ("simplejpeg", "simplejpeg")):
        lines.append(
            f"| JPEG decode limit ({label}) | "
            + " | ".join(_rate(r.get(f"limit_{dec}_clips_per_s")) for r in rows)
            + " |"
        )
    ratios = {
        "frames_vs_rawframes": "frame shards / rawframes",
        "frames_vs_frames_dali": "frame shards: host / DALI",
        "frames_vs_limit": "frame shards / limit (OpenCV)",
        "frames_vs_limit_fastest": "frame shards / limit (fastest)",
        "vp9_vs_decord": "VP9 shards / decord",
        "vp9_vs_vp9_dali": "VP9 shards: host / DALI",
    }
    for key, label in ratios.items():
        if any(key in r for r in rows):
            lines.append(
                f"| {label} | " + " | ".join(f"**{_f(r.get(key))}x**" if key in r else "-" for r in rows) + " |"
            )
    return lines


def loaders_goal_lines(d: dict) -> list[str]:
    """The goals at 8x8, with the per-round ratios they come from."""
    row = next((r for r in d["results"] if r["config"] == "8x8"), {})
    lines = []
    for key, (goal, label) in LOADER_GOALS.items():
        value = row.get(key)
        rounds = row.get(f"{key}_rounds")
        per_round = f" (rounds: {', '.join(f'{x:.2f}' for x in rounds)})" if rounds else ""
        verdict = "not measured" if value is None else "met" if value >= goal else "NOT met"
        lines.append(f"- {label} >= {goal}x at 8x8: {_f(value)}x{per_round} -> {verdict}")
    if row.get("frames_vs_frames_whole") is not None:
        rounds = ", ".join(f"{x:.2f}" for x in row["frames_vs_frames_whole_rounds"])
        lines.append(
            f"- window decoding (`pipeline._jpegwindow`): frame shards / the same decoding whole frames "
            f"{_f(row['frames_vs_frames_whole'])}x at 8x8 (rounds: {rounds})"
        )
    t = d.get("test_mode")
    if t:
        lines.append(
            f"- test mode (8x8, {t['views']} views per video), videos/s: frame shards host "
            f"{_f(t['frames_videos_per_s'])} / DALI {_f(t['frames-dali_videos_per_s'])}; VP9 shards host "
            f"{_f(t['vp9_videos_per_s'])} / DALI {_f(t['vp9-dali_videos_per_s'])}"
        )
    return lines


def breakdown_table(d: dict) -> list[str]:
    """Where the host path's time goes (`benchmarks.data`'s breakdown, one thread)."""
    b = d.get("breakdown")
    if not b:
        return []
    steps = ("decode", "crop_resize_flip", "colour", "normalise")
    total = sum(b[f"frames_{k}_ms_per_frame"] for k in steps)
    return [
        "| frame shards, per frame (1 thread) | ms | share |",
        "|---|---|---|",
        *[
            f"| {_step_label(k, b)} | {_f(b[f'frames_{k}_ms_per_frame'], 3)} | "
            f"{_pct(b[f'frames_{k}_ms_per_frame'] / total, 0)} |"
            for k in steps
        ],
        *(
            [f"| (decode of the whole frame, for comparison) | {_f(b['frames_decode_whole_ms_per_frame'], 3)} | |"]
            if b.get("frames_decode_window")
            else []
        ),
        f"| planning a batch / reading its JPEGs (ms per batch) | {_f(b['frames_plan_ms_per_batch'], 2)} / "
        f"{_f(b['frames_read_ms_per_batch'], 2)} | |",
        f"| VP9, per clip: decode {_f(b['vp9_frames_decoded_per_clip'], 1)} frames (ms) / resample the 8 planes (ms) "
        f"| {_f(b['vp9_decode_ms_per_clip'], 1)} / {_f(b['vp9_resample_ms_per_clip'], 2)} | |",
    ]


def _step_label(step: str, b: dict) -> str:
    if step == "decode":
        return "decode (the crop's window)" if b.get("frames_decode_window") else "decode (whole frame)"
    return step.replace("_", " + ")


def feed_table(d: dict) -> list[str]:
    rows = [
        f"{d['model']} on {d['device']}, batch {d['batch']}, step mode {d['step_mode']}"
        + (" (compiled)" if d.get("compiled") else ""),
        "",
        "| contender | clips/s | x in-memory training |",
        "|---|---|---|",
    ]
    rows += [f"| {r['contender']} | {_f(r['clips_per_s'], 1)} | {_f(r['vs_in_memory'])}x |" for r in d["rows"]]
    return rows


def scale_table(d: dict) -> list[str]:
    """Index open time and resident bytes per sample; loader clips/s from disk and from S3 on loopback."""
    rows = [
        "| samples | open s | open + read every per-sample number s | resident bytes per sample "
        "| index file bytes per sample |",
        "|---|---|---|---|---|",
    ]
    rows += [
        f"| {r['samples']:,} | {_f(r['open_s'], 3)} | {_f(r['open_and_touch_s'], 3)} "
        f"| {_f(r['rss_bytes_per_sample'], 1)} | {_f(r['file_bytes_per_sample'], 1)} |"
        for r in d.get("index", [])
    ]
    if "python_records_bytes_per_sample" in d:
        n = min(r["samples"] for r in d["index"])
        rows += [
            "",
            f"The previous index (one Python record per sample) held "
            f"{_f(d['python_records_bytes_per_sample'], 0)} bytes per sample at {n:,} samples.",
        ]
    st = d.get("storage")
    if st:
        rows += ["", "| frame shards, 8x8 clips at 224 | clips/s |", "|---|---|"]
        rows += [f"| {k} | {_f(v, 1)} |" for k, v in st["clips_per_s"].items()]
        rows += [
            "",
            f"- loader from S3 / plain range-read loop of the same byte ranges: "
            f"{_f(st['loader_vs_range_loop'])}x (goal >= 0.8); S3 on loopback / local disk: {_f(st['s3_vs_local'])}x",
        ]
    return rows


def goal_lines(d: dict) -> list[str]:
    """The payload's goal verdicts and notes as bullets (they were judged in the run itself)."""
    return [f"- {g}" for g in d.get("goals", [])] + [f"- note: {n}" for n in d.get("notes", [])]


def infer_table(d: dict) -> list[str]:
    rows = ["| model | batch | backend | clips/s | median latency ms | x PyTorch FP32 |", "|---|---|---|---|---|---|"]
    for r in d["rows"]:
        rows.append(
            f"| {_name(r, r['model'])} | {r['batch']} | {r['backend']} | {_f(r['clips_per_s'])} "
            f"| {_f(r['median_ms'], 1)} "
            f"| {_f(r.get('ratio_vs_torch_fp32'))}x |"
        )
    return rows + [""] + goal_lines(d)


def deploy_table(d: dict) -> list[str]:
    """CPU deployment: every backend of each model and batch against ONNX Runtime FP32 (today's CPU path) and
    PyTorch FP32, with the precision each runtime reported and its logits' distance to PyTorch FP32."""
    rows = [
        "| model | batch | backend | ran in | clips/s | median ms | x ONNX Runtime FP32 | x PyTorch FP32 "
        "| max logit diff vs PyTorch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    ort = {(r["model"], r["batch"]): r["clips_per_s"] for r in d["rows"] if r["backend"] == "ort-cpu"}
    for r in d["rows"]:
        if r["backend"].startswith("ort-cpu (") and "thread" not in r["backend"]:
            continue  # the graph-optimisation levels: in the result file, not the deployment question
        base = ort.get((r["model"], r["batch"]))
        vs_ort = f"{_f(r['clips_per_s'] / base)}x" if base else "-"
        ran = r.get("precision") or ("bf16" if "bf16" in r["backend"] else "fp32")
        diff = "-" if r.get("max_abs_diff") is None else f"{r['max_abs_diff']:.2g}"
        rows.append(
            f"| {_name(r, r['model'])} | {r['batch']} | {r['backend']} | {ran} | {_rate(r['clips_per_s'])} "
            f"| {_f(r['median_ms'], 1)} | {vs_ort} | {_f(r.get('ratio_vs_torch_fp32'))}x | {diff} |"
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
    rows = [
        f"| model | batch | {a.replace('-', ' ')} clips/s | {b.replace('-', ' ')} clips/s "
        f"| {b.split('-')[-1]} / {a.split('-')[-1]} |",
        "|---|---|---|---|---|",
    ]
    for batch in sorted({r["batch"] for r in d["rows"] if r["model"] == model}):
        ra, rb = by.get((model, batch, a)), by.get((model, batch, b))
        if ra and rb:
            rows.append(
                f"| {model} | {batch} | {_f(ra['clips_per_s'], 1)} | {_f(rb['clips_per_s'], 1)} "
                f"| {_f(rb['clips_per_s'] / ra['clips_per_s'])}x |"
            )
    return rows
