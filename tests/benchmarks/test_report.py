"""`python -m benchmarks report`: the README's generated tables agree with the result files, and the
charts draw only what may be drawn (no invalid figures, no cross-machine axes, ratios within a run)."""

import json
import shutil

import pytest

from benchmarks import charts, report
from benchmarks import tables
from benchmarks.tables import precision_table, train_table

RESULTS = report.Results(report.common.RESULTS)


def _machine(gpu="NVIDIA H100 80GB HBM3", date="2026-11-25T15:00:00+00:00"):
    return {"gpu": gpu, "cpu": "Xeon", "cores": 16, "platform": "Linux", "date": date}


def _train_payload():
    return {
        "machine": _machine(),
        "rows": [
            {
                "mode": "fp32-eager",
                "model": "m",
                "batch": 16,
                "device": "cuda",
                "clips_per_s": 100.0,
                "median_step_ms": 160.0,
                "tflops_per_s": 50.0,
                "mfu": 0.1,
                "speedup": 1.0,
            },
            {
                "mode": "bf16-cl3d-graph",
                "model": "m",
                "batch": 16,
                "device": "cuda",
                "clips_per_s": 250.0,
                "median_step_ms": 64.0,
                "tflops_per_s": 125.0,
                "mfu": 0.25,
                "speedup": 2.5,
            },
            {
                "mode": "bf16-cl3d-compile-graph",
                "model": "m",
                "batch": 16,
                "device": "cuda",
                "clips_per_s": 900.0,
                "median_step_ms": 17.8,
                "tflops_per_s": 450.0,
                "mfu": 0.9,
                "speedup": 9.0,
                "invalid": "fell back to eager",
            },
        ],
    }


def _loader_payload(machine=None):
    return {
        "machine": machine or _machine(),
        "clip": "8x8 at 224",
        "rows": [
            {"label": "nvdec vp9, batch 8", "codec": "vp9", "clips_per_s": 50.0, "vs_default": 1.0},
            {"label": "nvdec h264, batch 8", "codec": "h264", "clips_per_s": 70.0, "vs_default": 1.4},
        ],
    }


# ------------------------------------------------------- README vs results


def test_readme_generated_blocks_match_the_result_files():
    text = report.README.read_text()
    bodies = report.render_blocks(report.BLOCKS, RESULTS, report.README.parent)
    assert report.stale_blocks(text, bodies) == [], "run: python -m benchmarks report"
    assert report.replace_blocks(text, bodies) == text
    assert set(report.read_blocks(text)) == {b.name for b in report.BLOCKS}


def test_readme_shows_each_chart_next_to_its_table():
    text = report.README.read_text()
    blocks = report.read_blocks(text)
    for b in report.BLOCKS:
        if b.chart is not None:
            rel = f"benchmarks/results/report/{b.name}.png"
            assert f"]({rel})" in blocks[b.name] and (report.README.parent / rel).is_file(), rel


def test_check_fails_when_a_result_file_changes_and_report_repairs_the_readme(tmp_path, capsys):
    results, readme = tmp_path / "results", tmp_path / "README.md"
    shutil.copytree(report.common.RESULTS, results, ignore=shutil.ignore_patterns("*.png", "report"))
    readme.write_text(report.README.read_text().replace("](benchmarks/results/", "](results/"))
    args = ["--readme", str(readme), "--results", str(results)]
    assert report.main(["--check", *args]) == 0
    source = next(b.source for b in report.BLOCKS if b.name == "cpu2-shard")
    shard = results / f"{source}.json"
    payload = json.loads(shard.read_text())
    payload["ratio_wall"] = 1.234
    shard.write_text(json.dumps(payload))
    assert report.main(["--check", *args]) == 1
    assert "cpu2-shard" in capsys.readouterr().out
    before = readme.read_text()
    assert report.main(args) == 0
    after = readme.read_text()
    old = f"**{json.loads((report.common.RESULTS / shard.name).read_text())['ratio_wall']:.3f}**"
    assert "**1.234** (goal <= 1.1)" in after and old not in after
    # only the changed block moved; the prose around it is untouched
    assert after.replace("**1.234**", old) == before
    assert report.main(["--check", *args]) == 0
    drawn = sorted(p.name for p in (results / "report").glob("*.png"))
    assert drawn == sorted(f"{b.name}.png" for b in report.BLOCKS if b.chart is not None)


def test_benchmarks_main_dispatches_report():
    from benchmarks.__main__ import main

    assert main(["report", "--check"]) == 0


def test_missing_result_file_is_a_clear_error(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(report.README.read_text())
    assert report.main(["--check", "--readme", str(readme), "--results", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert "result file not found" in err and "none" in err


# ------------------------------------------------------- block markers


def _block(name, body="old\n"):
    return f"{report.BEGIN.format(name=name)}\n{body}{report.END}"


def test_replace_blocks_touches_only_the_block_bodies():
    a_old, b_old, a_new, b_new = _block("a"), _block("b", "x\ny\n"), _block("a", "A\n"), _block("b", "B\n")
    text = f"intro\n\n{a_old}\n\nmiddle\n{b_old}\nend\n"
    new = report.replace_blocks(text, {"a": "A\n", "b": "B\n"})
    assert new == f"intro\n\n{a_new}\n\nmiddle\n{b_new}\nend\n"
    assert report.stale_blocks(text, {"a": "old\n", "b": "B\n"}) == ["b"]


@pytest.mark.parametrize(
    "text, match",
    [
        (_block("a"), "no block for b"),
        (_block("a") + _block("b") + _block("c"), "not in benchmarks.report.BLOCKS"),
        (_block("a") + _block("a") + _block("b"), "appears twice"),
        (_block("a") + _block("b") + report.BEGIN.format(name="c") + "\n", "no matching"),
    ],
)
def test_block_marker_mistakes_are_named(text, match):
    with pytest.raises(report.ReportError, match=match):
        report.replace_blocks(text, {"a": "", "b": ""})


# ------------------------------------------------------- chart selection


def _loaders_payload() -> dict:
    """A `benchmarks.data` payload: two clip shapes, decord failed to run, one shape flagged afterwards."""
    contenders = ["frames", "rawframes", "vp9", "decord"]
    rows = []
    for config, frames, raw, vp9 in (
        ("8x8", 120.0, 50.0, 20.0),
        ("16x4", 60.0, 30.0, 15.0),
        ("32x2", 30.0, 15.0, 12.0),
    ):
        rows.append(
            {
                "config": config,
                "frames_clips_per_s": frames,
                "rawframes_clips_per_s": raw,
                "vp9_clips_per_s": vp9,
                "decord_error": "ImportError: No module named 'decord'",
                "frames_vs_rawframes": frames / raw,
                "frames_vs_rawframes_rounds": [frames / raw, 2.5],
                "limit_opencv_clips_per_s": 400.0,
                "limit_simplejpeg_clips_per_s": 700.0,
                "frames_vs_limit": frames / 400.0,
                "crosses_epoch": [],
            }
        )
    rows[2]["invalid"] = "timed on a busy machine"
    return {
        "machine": _machine(gpu=None),
        "settings": {"contenders": contenders, "batch_size": 8, "workers": 2, "content": "footage"},
        "videos": 120,
        "results": rows,
    }


def test_loaders_table_and_goals_say_what_ran_and_what_failed():
    payload = _loaders_payload()
    table = tables.loaders_table(payload)
    assert table[0] == "| contender | 8x8 | 16x4 | 32x2 |"
    assert "| ClipLoader, frame shards (host) | 120.0 | 60.0 | 30.0 |" in table
    assert "| mmaction2-style decord, H.264 | failed | failed | failed |" in table
    assert "| frame shards / rawframes | **2.40x** | **2.00x** | **2.00x** |" in table
    goals = tables.loaders_goal_lines(payload)
    assert goals[0] == "- frame shards / rawframes >= 2.0x at 8x8: 2.40x (rounds: 2.40, 2.50) -> met"
    assert goals[1].endswith("0.30x -> NOT met") and goals[2].endswith("-x -> not measured")


def test_loaders_chart_draws_each_contender_once_and_skips_invalid_rows():
    chart = charts.loaders_chart(_loaders_payload())
    assert chart.categories == ["8x8", "16x4"]  # 32x2 is flagged invalid
    names = [s.name for s in chart.series]
    assert len(names) == len(set(names)) == 5 and names[-1] == "JPEG decode limit (OpenCV)"
    assert chart.series[0].values == [120.0, 60.0] and chart.series[3].values == [None, None]  # decord never ran
    assert "footage" in chart.title and "120" in chart.title
    assert len(set(charts.series_colors(len(names)))) == len(names)  # one colour per contender


def test_loader_chart_lines_come_from_the_fastest_valid_training_mode():
    chart = charts.loader_chart(_loader_payload(), _train_payload())
    assert [ln.value for ln in chart.lines] == [250.0, 375.0]  # the 900 clips/s row is flagged invalid
    assert chart.lines[1].goal and "1.5x" in chart.lines[1].label
    assert {s.name for s in chart.series} == {"VP9 shards", "H264 shards"}
    assert chart.series[0].values == [50.0, None]  # each bar in its format's colour, no double bars


def test_loader_and_training_of_two_machines_never_share_an_axis():
    other = _loader_payload(_machine(gpu="NVIDIA A100-SXM4-80GB"))
    with pytest.raises(charts.ChartError, match="different machines"):
        charts.loader_chart(other, _train_payload())


def test_train_chart_goal_is_three_times_fp32_eager_of_the_same_run():
    chart = charts.train_chart(_train_payload())
    assert chart.categories == ["fp32-eager", "bf16-cl3d-graph"]
    assert [ln.value for ln in chart.lines] == [300.0]
    assert chart.annotations == ["(1.00x fp32-eager)", "(2.50x fp32-eager)"]


def test_infer_chart_keeps_one_model_and_the_chosen_backends():
    chart = charts.infer_chart(RESULTS["2026-11-25-h100-infer"], "tpn_r50_f8s8", ["torch-fp32", "torch-bf16"])
    assert chart.categories == ["batch 1", "batch 8", "batch 32"]
    assert [s.name for s in chart.series] == ["torch-fp32", "torch-bf16"]
    with pytest.raises(charts.ChartError):
        charts.infer_chart(RESULTS["2026-11-25-h100-infer"], "no_such_model")


def test_train_table_notes_tf32_only_where_a_gpu_ran_and_precision_table_pairs_rows():
    gpu = train_table(_train_payload())
    assert gpu[2].startswith(
        "| fp32-eager (PyTorch defaults: TF32 convolutions) | 100.0 | 160.0 | 50.0 | 10.0% | 1.00x |"
    )
    cpu = _train_payload()
    cpu["rows"] = [{**cpu["rows"][0], "device": "cpu", "clips_per_s": 0.21}]
    assert train_table(cpu)[2].startswith("| fp32-eager | 0.21 |")
    assert train_table(_train_payload())[4].startswith("| bf16-cl3d-compile-graph (**invalid**: fell back to eager) |")
    infer = {
        "rows": [
            {"model": "m", "batch": 1, "backend": "torch-fp32", "clips_per_s": 10.0},
            {"model": "m", "batch": 1, "backend": "torch-bf16", "clips_per_s": 15.0},
            {"model": "m", "batch": 8, "backend": "torch-fp32", "clips_per_s": 40.0},
        ]
    }
    assert precision_table(infer, "m")[2:] == ["| m | 1 | 10.0 | 15.0 | 1.50x |"]


def test_rows_that_did_not_run_as_named_are_not_drawn_and_say_why():
    from benchmarks.charts import fastest_training
    from benchmarks.rows import valid_rows
    from benchmarks.tables import _name

    ok = {"mode": "bf16-cl3d", "clips_per_s": 10.0}
    fell_back = {"mode": "bf16-cl3d-graph", "clips_per_s": 30.0, "ok": False, "problem": "ran eager"}
    flagged = {"mode": "fp32-eager", "clips_per_s": 20.0, "invalid": "timer bug"}
    assert valid_rows([ok, fell_back, flagged]) == [ok]
    assert fastest_training({"rows": [ok, fell_back, flagged]}) is ok
    assert _name(fell_back, "graph") == "graph (**invalid**: ran eager)" and _name(ok, "x") == "x"


def test_every_series_of_a_chart_has_its_own_colour():
    for n in range(1, 21):
        assert len(set(charts.series_colors(n))) == n
    with pytest.raises(charts.ChartError, match="distinct colours"):
        charts.series_colors(21)
