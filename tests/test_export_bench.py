"""The inference benchmark's pure parts: summaries, ratios, goal verdicts, what runs where."""

from __future__ import annotations


import pytest

from benchmarks.infer import add_ratios, build_parser, cpu_has_native_bf16, goal_lines, plan, summarize


def test_summarize_uses_the_median_round():
    s = summarize([0.5, 0.1, 0.2], batch=8)
    assert s["median_ms"] == pytest.approx(200.0) and s["clips_per_s"] == pytest.approx(40.0) and s["rounds"] == 3


def _row(backend, batch, cps, model="tpn_r50_f8s8", tiny=False):
    return {"model": model, "tiny": tiny, "batch": batch, "backend": backend, "clips_per_s": cps}


def test_ratios_and_goals():
    rows = add_ratios([
        _row("torch-fp32", 1, 1.0), _row("ort-cpu", 1, 1.5), _row("ort-cpu (disable)", 1, 3.0),
        _row("torch-fp32", 8, 2.0), _row("ort-cpu", 8, 2.2),
        _row("torch-fp32", 1, 10.0, model="t", tiny=True), _row("ort-cpu", 1, 100.0, model="t", tiny=True),
    ])  # fmt: skip
    assert [r["ratio_vs_torch_fp32"] for r in rows[:5]] == pytest.approx([1.0, 1.5, 3.0, 1.0, 1.1])
    ort, trt = goal_lines(rows, "cpu")
    # judged on the default backend at batch 1 of the full model, not the tiny one or a variant
    assert "1.50x at batch 1 -> met" in ort
    assert "not measured" in trt
    slow = add_ratios([_row("torch-fp32", 1, 1.0), _row("ort-cpu", 1, 1.1)])
    assert "NOT met" in goal_lines(slow, "cpu")[0]


def test_native_bf16_detection():
    assert not cpu_has_native_bf16("flags : fpu avx2 fma")
    assert cpu_has_native_bf16("flags : avx512f avx512_bf16")
    assert cpu_has_native_bf16("flags : amx_bf16 amx_tile")


def test_plan_keeps_the_full_model_small_on_cpu():
    args = build_parser().parse_args([])
    assert plan(args, gpu=False) == [("tpn_tiny_f8s4", [1, 8, 32]), ("tpn_r50_f8s8", [1, 8])]
    assert plan(args, gpu=True)[1] == ("tpn_r50_f8s8", [1, 8, 32])
    assert plan(build_parser().parse_args(["--full"]), gpu=False)[1] == ("tpn_r50_f8s8", [1, 8, 32])
    assert plan(build_parser().parse_args(["--tiny"]), gpu=False) == [("tpn_tiny_f8s4", [1, 8])]
