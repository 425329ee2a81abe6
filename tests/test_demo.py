"""The demo at its smallest size: every stage runs as its CLI, the summary is complete, re-runs reuse."""

import subprocess
import sys

import pytest

from tpn.demo import MODELS, DemoPaths, plan


def test_plan_is_the_documented_flow(tmp_path):
    stages = plan(DemoPaths(tmp_path), "default", seed=0)
    modules = [s.argv[2] for s in stages]
    assert modules == [
        "pipeline.synth", "pipeline.shard", "pipeline.verify", "tpn.train", "tpn.train", "tpn.test", "tpn.test",
        "export.onnx", "export.trt", "export.validate", "export.validate",
    ]  # fmt: skip
    assert [s.argv[3] for s in stages if s.argv[2] == "tpn.train"] == list(MODELS)
    trt = next(s for s in stages if s.argv[2] == "export.trt")
    assert 2 in trt.ok_codes  # "TensorRT not available" is an expected outcome, not a failure


@pytest.mark.timeout(900)
def test_demo_smoke_runs_end_to_end_and_reuses_finished_stages(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "tpn.demo", "--out", str(out), "--size", "smoke"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    text = first.stdout
    for needle in ["tpn demo: summary", "| tpn_tiny_f8s4 |", "| baseline_tiny_f8s4 |", "chance level: 12.5%",
                   "tpn_tiny_f8s4.onnx | ort-cpu (fp32)", "tpn_tiny_f8s4.fp16.onnx | ort-cpu (fp16)", "TensorRT engine:"]:  # fmt: skip
        assert needle in text, needle
    p = DemoPaths(out)
    assert (p.run(MODELS[0]) / "best.pth").is_file() and p.onnx().is_file() and p.onnx(fp16=True).is_file()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0
    assert second.stdout.count("done before: reusing its outputs") == len(plan(p, "smoke", 0))
