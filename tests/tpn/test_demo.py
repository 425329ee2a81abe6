"""The demo at its smallest size: every stage runs as its CLI, the summary is complete, re-runs reuse."""

import hashlib
import subprocess
import sys

import pytest

from export.runtime import openvino_installed

from tpn.demo import MODELS, DemoPaths, held_out_seed, plan, verdict


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_plan_is_the_documented_flow(tmp_path):
    stages = plan(DemoPaths(tmp_path), "default", seed=0)
    modules = [s.argv[2] for s in stages]
    assert modules == [
        "pipeline.synth",
        "pipeline.shard",
        "pipeline.verify",
        "pipeline.synth",
        "pipeline.shard",
        "pipeline.verify",
        "tpn.train",
        "tpn.train",
        "tpn.test",
        "tpn.test",
        "export.onnx",
        "export.trt",
        "export.validate",
        "export.validate",
    ]
    assert [s.argv[3] for s in stages if s.argv[2] == "tpn.train"] == list(MODELS)
    trt = next(s for s in stages if s.argv[2] == "export.trt")
    assert 2 in trt.ok_codes  # "TensorRT not available" is an expected outcome, not a failure
    shard = [s.argv for s in stages if s.argv[2] == "pipeline.shard"]
    assert all(a[a.index("--codec") + 1] == "jpeg" for a in shard)  # frame shards unless --codec says otherwise
    vp9 = [s.argv for s in plan(DemoPaths(tmp_path), "default", seed=0, codec="vp9") if s.argv[2] == "pipeline.shard"]
    assert all(a[a.index("--codec") + 1] == "vp9" for a in vp9)


@pytest.mark.parametrize("seed", [0, 7])
def test_plan_keeps_the_test_split_out_of_training_and_selection(tmp_path, seed):
    p = DemoPaths(tmp_path)
    stages = plan(p, "default", seed=seed)
    synth = [s.argv for s in stages if s.argv[2] == "pipeline.synth"]
    assert [_option(a, "--seed") for a in synth] == [str(seed), str(held_out_seed(seed))]
    assert held_out_seed(seed) != seed  # the generator seeds each video by (seed, split, class, index)
    assert _option(synth[1], "--train-per-class") == "0"
    shard_test = next(s.argv for s in stages if s.name == "shard test")
    assert _option(shard_test, "--classes") == str(p.shards / "classes.json")  # the train run's label order
    used_in_training = {a for s in stages if s.argv[2] == "tpn.train" for a in s.argv}
    assert str(p.test_shards) not in used_in_training and str(p.shards) in used_in_training
    for s in stages:
        if s.argv[2] == "tpn.test":
            assert _option(s.argv, "--shards") == str(p.test_shards)
            assert _option(s.argv, "--checkpoint").endswith("best.pth")


@pytest.mark.parametrize(
    "tpn, base, videos, says",
    [
        (80.0, 60.0, 64, ["beat the baseline by 20.0 points", "one video = 1.6 points", "one seed"]),
        (60.0, 70.0, 64, ["did NOT beat", "60.0% vs 70.0%", "one video = 1.6 points"]),
        (20.0, 15.0, 64, ["Neither model got far above chance"]),
        (80.0, 60.0, None, ["beat the baseline by 20.0 points on the held-out test videos."]),
    ],
)
def test_verdict_states_the_gap_and_how_coarse_it_is(tpn, base, videos, says):
    text = verdict({MODELS[0]: tpn, MODELS[1]: base}, chance=0.125, videos=videos)
    assert all(s in text for s in says), text
    assert verdict({MODELS[0]: tpn}, 0.125, videos).startswith("Not every model was tested")


def _digests(folder) -> set[str]:
    return {hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.rglob("*.mp4")}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_demo_smoke_runs_end_to_end_and_reuses_finished_stages(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "tpn.demo", "--out", str(out), "--size", "smoke"]
    first = subprocess.run(cmd, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    text = first.stdout
    for needle in [
        "tpn demo: summary",
        "| tpn_tiny_f8s4 |",
        "| baseline_tiny_f8s4 |",
        "chance level: 12.5%",
        "held-out synthetic test videos; seed 0",
        "Videos per split: train 16, val 8, test 8",
        f"test videos drawn with seed {held_out_seed(0)}",
        f"tpn_tiny_f8s4.onnx | {'openvino' if openvino_installed() else 'ort-cpu'} (fp32)",
        "tpn_tiny_f8s4.fp16.onnx | ort-cpu (fp16)",  # FP16 stays in ONNX Runtime, where it was checked
        "| tpn_tiny_f8s4.int8.onnx |",
        "TensorRT engine:",
        "JPEG frame shards",
    ]:
        assert needle in text, needle
    if openvino_installed():  # the [cpu] extra: the INT8 file is made, gated and timed
        assert "| tpn_tiny_f8s4.int8.onnx | openvino (int8) |" in text and "INT8 speed (batch 1" in text
    p = DemoPaths(out)
    test_videos, seen_videos = _digests(p.test_data), _digests(p.data)
    assert len(test_videos) == 8 and len(seen_videos) == 24 and not test_videos & seen_videos
    assert "| tpn_tiny_f8s4 | " in text and " | 8 | " in text.split("| tpn_tiny_f8s4 |", 1)[1].split("\n", 1)[0]
    assert (p.run(MODELS[0]) / "best.pth").is_file() and p.onnx().is_file() and p.onnx(fp16=True).is_file()
    second = subprocess.run(cmd, capture_output=True, text=True)
    assert second.returncode == 0
    assert second.stdout.count("done before: reusing its outputs") == len(plan(p, "smoke", 0))
