"""The test protocol: view counts, softmax averaging per video, accuracies, dedupe, CLI (1 and 2 processes)."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import tpn
from pipeline import ClipLoader
from tests.train_helpers import VAL_VIDEOS, synthetic_shards
from tpn.checkpoint import save_checkpoint
from tpn.metrics import accuracy, average_views, topk_correct
from tpn.evaluate import _report, evaluate, protocol_spec
from tpn.test import main

TINY = "tpn_tiny_f8s4"


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.getbasetemp())


# ---------------------------------------------------------------------- maths


def softmax(row: list[float]) -> list[float]:
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def test_views_are_averaged_as_softmax_probabilities():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0], [5.0, 0.0], [0.0, 5.0], [3.0, 3.0]])
    got = average_views(logits, 3)  # 2 videos x 3 views
    for video in range(2):
        rows = [softmax(logits[3 * video + v].tolist()) for v in range(3)]
        expected = [sum(r[c] for r in rows) / 3 for c in range(2)]
        assert got[video].tolist() == pytest.approx(expected)
    # not the softmax of averaged logits: the two differ here
    assert not torch.allclose(got[0], logits[:3].mean(0).softmax(-1))
    with pytest.raises(ValueError, match="groups of 4"):
        average_views(logits, 4)


def test_accuracies():
    scores = torch.tensor(
        [
            [0.7, 0.2, 0.1],  # label 0: right
            [0.1, 0.5, 0.4],  # label 2: second best
            [0.6, 0.3, 0.1],  # label 1: wrong
            [0.2, 0.7, 0.1],  # label 1: right
            [0.1, 0.2, 0.7],  # label 2: right
        ]
    )
    labels = torch.tensor([0, 2, 1, 1, 2])
    acc = accuracy(scores, labels)
    assert acc["top1"] == pytest.approx(60.0)
    assert acc["top5"] == pytest.approx(100.0)  # k is capped at 3 classes
    assert acc["mean_class_acc"] == pytest.approx(100 * (1.0 + 0.5 + 0.5) / 3)  # per-class recall
    assert topk_correct(scores, labels, 2).tolist() == [True, True, True, True, True]
    with pytest.raises(ValueError, match="no videos"):
        accuracy(scores[:0], labels[:0])


def test_ranks_results_are_merged_without_duplicates():
    one_hot = torch.eye(3)
    rank0 = (["a", "b", "c"], [0, 1, 2], one_hot[[0, 1, 0]], 6)
    rank1 = (["d", "c"], [1, 2], one_hot[[1, 2]], 6)  # "c" again (e.g. padding): first copy wins
    report = _report([rank0, rank1], 1.0, True, torch.nn.Linear(1, 1))
    assert report.num_videos == 4 and report.views == 6
    assert [s.key for s in report.scores] == ["a", "b", "c", "d"]
    assert report.top1 == pytest.approx(75.0)  # c scored as class 0 by rank 0


@pytest.mark.parametrize(
    "name, views, flipped",
    [
        ("tpn_r50_f8s8", 30, 60),  # Kinetics: 10 clips x 3 crops
        ("baseline_r101_f32s2", 30, 60),
        ("tsm50_tpn_sthv1", 6, 12),  # Something-Something: twice sample x 3 crops
        (TINY, 6, 12),
    ],
)
def test_protocol_view_counts(name, views, flipped):
    clip = tpn.get_config(name).clip
    assert protocol_spec(clip).num_test_views == views
    assert protocol_spec(clip, flip=True).num_test_views == flipped
    single = protocol_spec(clip, clips=1, crops="center")
    assert single.num_test_views == (1 if clip.sampling == "dense" else 2)  # --clips is for dense sampling


# ---------------------------------------------------------------------- real shards


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return tpn.create_model(TINY)


def manual_scores(model, loader, batches: int) -> dict[str, torch.Tensor]:
    """Per-video mean softmax computed directly, one video's views at a time."""
    out = {}
    model.eval()
    with torch.no_grad():
        for clips, _, keys in itertools.islice(loader, batches):
            for video, key in zip(clips, keys):
                out[key] = model(video).softmax(-1).mean(0)  # (V, 3, F, H, W) -> (K,)
    return out


@pytest.mark.parametrize("flip", [False, True])
def test_evaluate_on_real_views(shards, flip):
    spec = protocol_spec(tpn.get_config(TINY).clip, flip=flip)
    loader = ClipLoader(shards, spec, mode="test", batch_size=3, device="cpu", split="val", return_keys=True)
    model = tiny_model()
    report = evaluate(model, itertools.islice(loader, 1), max_clips=5, keep_scores=True)
    assert report.views == (12 if flip else 6) and report.num_videos == 3
    assert model.training  # evaluate restores the mode it found
    expected = manual_scores(model, loader, 1)
    assert sorted(expected) == [s.key for s in report.scores]
    for s in report.scores:
        assert torch.allclose(torch.tensor(s.probs), expected[s.key], atol=1e-5)
        assert sum(s.probs) == pytest.approx(1.0, abs=1e-5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pth", tiny_model(1))


def cli(shards: Path, checkpoint: Path, out: Path) -> list[str]:
    return [
        TINY,
        "--checkpoint",
        str(checkpoint),
        "--shards",
        str(shards),
        "--clips",
        "1",
        "--crops",
        "center",
        "--batch-size",
        "8",
        "--device",
        "cpu",
        "--loader-device",
        "cpu",
        "--workers",
        "1",
        "--out",
        str(out / "report.json"),
        "--per-video",
        str(out / "scores.jsonl"),
    ]


def read_outputs(out: Path) -> tuple[dict, dict[str, dict]]:
    report = json.loads((out / "report.json").read_text())
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    return report, {r["key"]: r for r in rows}


@pytest.fixture(scope="module")
def single_process(shards, checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single")
    assert main(cli(shards, checkpoint, out)) == 0
    return out


def test_cli_report_and_per_video_scores(single_process, capsys):
    report, rows = read_outputs(single_process)
    assert report["num_videos"] == VAL_VIDEOS == len(rows) and report["views"] == 1
    assert report["model"] == TINY and report["target_top1"] is None
    assert report["settings"]["crops"] == "center"
    for r in rows.values():
        assert r["pred"] == max(range(8), key=lambda c: r["probs"][c])
        assert sum(r["probs"]) == pytest.approx(1.0, abs=1e-5)
    top1 = 100 * sum(r["pred"] == r["label"] for r in rows.values()) / len(rows)
    assert report["top1"] == pytest.approx(top1)


def test_cli_errors_name_the_problem(shards, checkpoint, tmp_path, capsys):
    assert main(["no_such_model", "--checkpoint", str(checkpoint), "--shards", str(shards)]) == 1
    assert "unknown model" in capsys.readouterr().err
    assert main([TINY, "--checkpoint", str(tmp_path / "missing.pth"), "--shards", str(shards)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["tsm_tiny_tpn", "--checkpoint", str(checkpoint), "--shards", str(shards), "--device", "cpu"]) == 1
    assert "tpn_tiny_f8s4" in capsys.readouterr().err  # saved from another model
    # the same tensor shapes, another neck: refused by name, not tested quietly with the wrong model
    assert main(["tpn_tiny_pyr_f8s4", "--checkpoint", str(checkpoint), "--shards", str(shards), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "'tpn_tiny_f8s4'" in err and "'tpn_tiny_pyr_f8s4'" in err and "--allow-other-architecture" in err


def test_cli_reads_the_checkpoint_once_and_names_it_in_errors(shards, checkpoint, monkeypatch, capsys):
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: loads.append(str(f)) or real_load(f, *a, **kw))
    # a model the weights do not fit: it fails after reading the class count and loading the weights
    assert main(["tsm_tiny_tpn", "--checkpoint", str(checkpoint), "--shards", str(shards), "--device", "cpu"]) == 1
    assert loads == [str(checkpoint)]  # the class count and the weights come from one read
    assert f"error: {checkpoint} holds 'tpn_tiny_f8s4'" in capsys.readouterr().err  # the file, not a dict


@pytest.mark.slow
def test_two_processes_gather_every_video_once(shards, checkpoint, single_process, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "tpn.test",
        *cli(shards, checkpoint, tmp_path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report, rows = read_outputs(tmp_path)
    ref_report, ref_rows = read_outputs(single_process)
    assert report["num_videos"] == VAL_VIDEOS and sorted(rows) == sorted(ref_rows)
    for key, row in rows.items():
        assert row["label"] == ref_rows[key]["label"]
        assert row["probs"] == pytest.approx(ref_rows[key]["probs"], abs=1e-5)
    assert report["top1"] == pytest.approx(ref_report["top1"])
