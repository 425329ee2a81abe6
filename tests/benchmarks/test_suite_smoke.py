"""`python -m benchmarks --tiny`: every benchmark runs and lands in one report (figures not asserted)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.__main__ import BENCHES, loader_lines, loader_vs_training


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_benchmark_suite_tiny_writes_one_report(tmp_path):
    out = tmp_path / "results"
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--results", str(out)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (report,) = out.glob("*-tiny.json")
    data = json.loads(report.read_text())
    assert set(data["benchmarks"]) == set(BENCHES) and not data["failed"]
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"]
    md = report.with_suffix(".md").read_text()
    for bench in BENCHES:
        assert f"## {bench}" in md and f"python -m benchmarks.{bench}" in md
    assert data["benchmarks"]["train"]["command"].startswith("python -m benchmarks.train --tiny")


def test_loader_vs_training_compares_8x8_loading_with_the_fastest_training_mode():
    payloads = {
        "data": {
            "settings": {"device": "gpu"},
            "results": [
                {"config": "8x8", "vp9_clips_per_s": 100.0, "frames_clips_per_s": 300.0},
                {"config": "32x2", "vp9_clips_per_s": 90.0, "frames_clips_per_s": 900.0},
            ],
        },
        "train": {
            "rows": [
                {"mode": "fp32-eager", "model": "tpn_r50_f8s8", "batch": 16, "clips_per_s": 50.0},
                {"mode": "bf16-cl3d-graph", "model": "tpn_r50_f8s8", "batch": 16, "clips_per_s": 240.0},
            ]
        },
    }
    d = loader_vs_training(payloads)
    assert d["ratio"] == pytest.approx(1.25) and "bf16-cl3d-graph" in d["train"] and "gpu" in d["loader"]
    assert "JPEG frames, 8x8" in d["loader"]  # the faster format, at the trained model's clip shape
    assert "NOT met" in loader_lines(d)[-1]
    assert loader_vs_training({"data": payloads["data"]}) is None
    # a faster row that did not run as named (a graph that fell back, a flagged row) is never the training rate
    payloads["train"]["rows"] += [
        {
            "mode": "bf16-cl3d-compile-graph",
            "model": "tpn_r50_f8s8",
            "batch": 16,
            "clips_per_s": 900.0,
            "ok": False,
            "problem": "requested compiled-cuda-graph, ran compiled",
        },
        {"mode": "bf16-cl3d", "model": "tpn_r50_f8s8", "batch": 16, "clips_per_s": 800.0, "invalid": "timer bug"},
    ]
    assert loader_vs_training(payloads)["ratio"] == pytest.approx(1.25)


@pytest.mark.slow
def test_loader_variants_start_with_the_loaders_default_and_run_on_cpu(tmp_path):
    from benchmarks.loader_variants import variants
    from pipeline.options import resolve_decoder

    gpu = variants(True)
    for device, first in (("gpu", gpu[0]), ("cpu", variants(False)[0])):  # the baseline is what "auto" picks
        assert first.decoder == resolve_decoder("auto", device, first.codec)
        assert first.batch_size == 8 and first.loaders == 1 and first.threads == 0
    assert {v.codec for v in gpu} == {"vp9", "h264", "jpeg"}
    assert {v.decoder for v in gpu} == {"nvdec", "cpu", "pyav", "nvjpeg", "host"}
    assert {v.hw_load for v in gpu if v.codec == "jpeg"} >= {0.0, 1.0}  # the hardware decoder's share is measured
    assert all(v.decoder in ("host", "cpu", "pyav") for v in variants(False) + variants(False, tiny=True))
    assert {v.codec for v in variants(False)} == {"vp9", "jpeg"}
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.loader_variants", "--tiny", "--data", str(tmp_path / "d"), "--name", "lv"],
        env={**os.environ, "TPN_BENCH_RESULTS": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    rows = json.loads((tmp_path / "lv.json").read_text())["rows"]
    assert len(rows) == 4 and all(r["clips_per_s"] > 0 for r in rows) and rows[0]["vs_default"] == 1.0


def test_data_benchmark_warms_up_past_each_loaders_queue(tmp_path):
    from benchmarks.data import HOST_AHEAD, Settings, measure, warmup_batches

    # DataLoader: prefetch_factor 2 per worker can be queued; DALI: its prefetch depth of 2 decoded ahead;
    # the host backend: HOST_AHEAD batches in flight
    assert warmup_batches("rawframes", 16) == warmup_batches("decord", 16) == 34
    assert warmup_batches("frames-dali", 2) == warmup_batches("vp9-dali", 16) == 4
    assert warmup_batches("frames", 2) == warmup_batches("vp9", 2) == HOST_AHEAD + 2
    # With the default footage (120 videos, batch 8: 15 batches an epoch), ClipLoader's windows fit in one epoch
    s = Settings(data=tmp_path, workers=2)
    epoch = 3 * s.videos_per_source // s.batch_size
    assert max(warmup_batches(w, s.workers) for w in ("frames", "frames-dali", "vp9", "vp9-dali")) + s.batches <= epoch

    def batches():
        while True:
            yield torch.zeros(s.batch_size, 1), torch.zeros(s.batch_size)

    fits = measure(batches(), "frames-dali", s, warmup=4, epoch_batches=12)
    spans = measure(batches(), "frames-dali", s, warmup=7, epoch_batches=12)
    assert fits["crosses_epoch"] is False and spans["crosses_epoch"] is True
    assert not any(
        k.startswith("worker_") for k in spans
    )  # a spanning window's thread shares are left out  # a spanning window's thread shares are left out
