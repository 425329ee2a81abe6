"""The inference benchmark's pure parts: summaries, ratios, goal verdicts, what runs where."""

from __future__ import annotations


import pytest

from benchmarks.common import cpu_has_native_bf16
from benchmarks.infer import (
    add_ratios,
    agreement_goal_line,
    build_parser,
    goal_lines,
    int8_goal_line,
    plan,
    summarize,
    unreliable_models,
)


def test_summarize_uses_the_median_round():
    s = summarize([0.5, 0.1, 0.2], batch=8)
    assert s["median_ms"] == pytest.approx(200.0) and s["clips_per_s"] == pytest.approx(40.0) and s["rounds"] == 3


def _row(backend, batch, cps, model="tpn_r50_f8s8", tiny=False, device="cpu", threads=2):
    return {
        "model": model,
        "tiny": tiny,
        "batch": batch,
        "backend": backend,
        "clips_per_s": cps,
        "median_ms": 1e3 * batch / cps,
        "device": device,
        "threads": threads,
    }


def test_ratios_and_goals():
    rows = add_ratios(
        [
            _row("torch-fp32", 1, 1.0),
            _row("ort-cpu", 1, 1.5),
            _row("ort-cpu (disable)", 1, 3.0),
            _row("torch-fp32", 8, 2.0),
            _row("ort-cpu", 8, 2.2),
            _row("torch-fp32", 1, 10.0, model="t", tiny=True),
            _row("ort-cpu", 1, 100.0, model="t", tiny=True),
        ]
    )
    assert [r["ratio_vs_torch_fp32"] for r in rows[:5]] == pytest.approx([1.0, 1.5, 3.0, 1.0, 1.1])
    ort, ort_cuda, trt, agree, int8 = goal_lines(rows, "cpu")
    # judged on the default backend at batch 1 of the full model, not the tiny one or a variant
    assert "1.50x at batch 1 -> met" in ort
    assert all("not measured" in line for line in (ort_cuda, trt, agree, int8))
    slow = add_ratios([_row("torch-fp32", 1, 1.0), _row("ort-cpu", 1, 1.1)])
    assert "NOT met" in goal_lines(slow, "cpu")[0]


def test_the_int8_goal_takes_the_best_int8_row_over_onnx_runtime_fp32_at_batch_1():
    rows = [
        _row("torch-fp32", 1, 1.0),
        _row("ort-cpu", 1, 1.5),
        _row("ov-int8 (nncf)", 1, 6.3),
        _row("ort-int8 (ortq)", 1, 4.0),
        _row("ov-int8 (nncf)", 8, 30.0),  # another batch: not judged
        _row("ov-int8 (nncf)", 1, 50.0, model="t", tiny=True),  # another model: not judged
    ]
    assert "ov-int8 (nncf) 4.20x -> met" in int8_goal_line(rows)
    rows[2]["clips_per_s"] = 5.0
    assert "ov-int8 (nncf) 3.33x -> NOT met" in int8_goal_line(rows)
    assert "not measured" in int8_goal_line([_row("ort-cpu", 1, 1.5)])


def test_gpu_goals_at_batch_32():
    rows = add_ratios(
        [
            _row("torch-fp32", 32, 100.0, device="cuda"),
            _row("ort-cuda-fp16", 32, 320.0, device="cuda"),
            _row("ort-cuda-fp16", 8, 500.0, device="cuda"),
            _row("torch-fp32", 8, 100.0, device="cuda"),
        ]
    )
    assert "3.20x at batch 32 -> met" in goal_lines(rows, "cuda")[1]  # batch 32, not the better batch 8
    for r in rows:
        r.update(val_video_agreement=0.99, val_videos=200, weights="checkpoint")
    assert "99.00% of 200 videos -> NOT met" in agreement_goal_line(rows, "cuda")
    for r in rows:
        r.update(val_video_agreement=1.0, weights="random")
    assert "met, but on random weights" in agreement_goal_line(rows, "cuda")


def test_a_slower_multithreaded_pytorch_marks_the_cpu_ratios_unreliable():
    """The failure of an earlier report: PyTorch on 2 busy threads far slower than on one."""
    rows = add_ratios(
        [
            _row("torch-fp32", 1, 0.2),
            _row("ort-cpu", 1, 0.62),
            _row("torch-fp32 (1 thread)", 1, 0.57, threads=1),
            _row("ort-cpu (1 thread)", 1, 0.74, threads=1),
        ]
    )
    assert "not trustworthy" in unreliable_models(rows)["tpn_r50_f8s8"]
    assert "UNRELIABLE" in goal_lines(rows, "cpu")[0]
    fair = add_ratios(
        [_row("torch-fp32", 1, 0.9), _row("ort-cpu", 1, 1.2), _row("torch-fp32 (1 thread)", 1, 0.57, threads=1)]
    )
    assert unreliable_models(fair) == {} and "-> met" in goal_lines(fair, "cpu")[0]


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
