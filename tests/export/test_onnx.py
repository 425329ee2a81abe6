"""ONNX export: every model family exports and matches PyTorch; tolerances; the CLI's messages."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import tpn
from export.errors import CheckFailed, ExportError
from export.onnx import export_onnx, main, parse_input_size
from export.onnxfile import onnx_clip_shape, read_metadata, write_model
from export.deploy import parse_input_size_or_auto
from export.source import input_hw, load_model, synthetic_clips
from export.tolerance import FP16, FP32, Tolerance, compare_logits
from pipeline import sha256_file
from tpn.checkpoint import save_checkpoint

TINY = tpn.list_models("*tiny*")


# ----------------------------------------------------------------- tolerances (pure)


def test_compare_logits_bounds_are_relative_to_each_clips_largest_logit():
    ref = np.array([[10.0, 0.0, -5.0], [0.001, 0.002, 0.0]])
    ok = ref + np.array([[0.09, 0.09, -0.09], [5e-5, -5e-5, 0.0]])  # within 1e-2 * 10 and 1e-4 + 1e-2 * 0.002
    assert compare_logits(ok, ref, FP16).passed
    bad = ref.copy()
    bad[0, 1] += 0.2  # 2x the clip's allowed 0.1 + 1e-4
    a = compare_logits(bad, ref, FP16)
    assert not a.passed and a.worst_excess == pytest.approx(0.2 / (1e-4 + 0.1))
    assert not compare_logits(ok, ref, FP32).passed  # FP32 is ten times stricter


def test_compare_logits_counts_flips_only_beyond_ties():
    tol = Tolerance("t", atol=0.0, rtol=0.01)
    ref = np.array([[1.0, 0.999, 0.0], [1.0, 0.5, 0.0]])
    tie_flip = np.array([[0.999, 1.0, 0.0], [1.0, 0.5, 0.0]])  # a flip inside the tolerance
    a = compare_logits(tie_flip, ref, tol)
    assert a.top1_agreement == 0.5 and a.top1_agreement_tie_aware == 1.0 and a.passed
    real_flip = np.array([[1.0, 0.999, 0.0], [0.5, 1.0, 0.0]])
    a = compare_logits(real_flip, ref, tol)
    assert a.top1_agreement_tie_aware == 0.5 and not a.passed


def test_compare_logits_fails_on_non_finite_outputs():
    ref = np.ones((2, 3))
    out = ref.copy()
    out[1, 2] = np.nan
    assert not compare_logits(out, ref, FP16).passed


def test_input_sizes_and_size_parsing():
    cfg = tpn.get_config("tpn_r50_f8s8")
    assert input_hw(cfg, "train") == (224, 224)
    assert input_hw(cfg, "test") == (256, 256)
    assert input_hw(cfg, 160) == (160, 160) and input_hw(cfg, (256, 340)) == (256, 340)
    full = dataclasses.replace(cfg, clip=cfg.clip.replace(test_crops="full"))
    with pytest.raises(ExportError, match="explicit size"):
        input_hw(full, "test")
    for bad in (0, -8, (0, 128)):
        with pytest.raises(ExportError, match="positive int"):
            input_hw(cfg, bad)


def test_input_sizes_are_height_by_width():
    assert parse_input_size("test") == "test" and parse_input_size("128") == 128
    assert parse_input_size("256x340") == (256, 340)  # height 256, width 340: the tensor's (H, W)
    for bad in ("auto", "256x", "1x2x3", "wide", "0", "-8", "0x128"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"HxW \(height x width"):
            parse_input_size(bad)
    assert parse_input_size_or_auto("auto") == "auto" and parse_input_size_or_auto("112x160") == (112, 160)
    with pytest.raises(argparse.ArgumentTypeError, match="auto, train, test"):
        parse_input_size_or_auto("big")


def test_synthetic_clips_are_seeded_and_normalised():
    clip = tpn.get_config("tpn_tiny_f8s4").clip
    a = synthetic_clips(2, (3, 8, 32, 32), mean=clip.mean, std=clip.std, seed=3)
    b = synthetic_clips(2, (3, 8, 32, 32), mean=clip.mean, std=clip.std, seed=3)
    assert a.shape == (2, 3, 8, 32, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert -3.0 < a.min() and a.max() < 3.0 and abs(a.mean()) < 1.0


# ----------------------------------------------------------------- every family exports and matches


# One SlowOnly TPN and one TSM TPN in the quick set; the other families (each export takes seconds) run with
# the slow tests.
QUICK_FAMILIES = {"tpn_tiny_f8s4", "tsm_tiny_tpn"}


@pytest.mark.parametrize("name", [n if n in QUICK_FAMILIES else pytest.param(n, marks=pytest.mark.slow) for n in TINY])
def test_every_family_exports_and_matches_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = tpn.create_model(name)
    with torch.no_grad():  # a classifier with real margins, so Top-1 agreement means something
        torch.nn.init.normal_(model.cls_head.fc_cls.weight, 0.0, 1.0)
    r = export_onnx(model, out_dir=tmp_path)
    assert r.passed and r.parity.tolerance == "fp32" and r.parity.top1_agreement == 1.0
    assert r.parity_batches == [1, 3] and r.parity.clips == 4  # batch sizes other than the traced 2
    proto = onnx.load(r.path)
    onnx.checker.check_model(proto)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 8, 112, 112]
    assert proto.opset_import[0].version == 20 and "BatchNormalization" not in r.op_types  # folded
    assert not r.external_data and not (tmp_path / f"{name}.onnx.data").exists()
    assert read_metadata(proto)["model"] == name
    assert onnx_clip_shape(proto) == onnx_clip_shape(r.path) == (3, 8, 112, 112)
    assert [p.name for p in tmp_path.iterdir()] == [f"{name}.onnx"]  # nothing staged left behind


@pytest.mark.slow
def test_full_size_tpn_r50_exports_and_matches_pytorch(tmp_path):
    r = export_onnx("tpn_r50_f8s8", out_dir=tmp_path, parity_batches=(1,))
    assert r.passed and r.input_shape == ["batch", 3, 8, 224, 224]
    assert r.parity.max_abs_diff < 1e-4 and r.parity.top1_agreement == 1.0
    assert not r.external_data and 100 * 2**20 < r.size_bytes < 2**31


def test_parity_failure_is_enforced_and_not_published(tmp_path):
    zero = Tolerance("zero", atol=0.0, rtol=0.0)
    with pytest.raises(CheckFailed, match="disagrees with PyTorch") as err:
        export_onnx("baseline_tiny_f8s4", out_dir=tmp_path, parity_batches=(1,), tolerance=zero)
    assert not err.value.report.passed
    assert not (tmp_path / "baseline_tiny_f8s4.onnx").exists()
    assert (tmp_path / "rejected" / "baseline_tiny_f8s4.onnx").exists()


def test_external_data_pair_loads_in_onnx_runtime(tmp_path):
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 512])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 512])
    w = np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32)
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [onnx.numpy_helper.from_array(w, "w")]
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    files = write_model(model, tmp_path / "m.onnx", external_data=True)
    assert [f.name for f in files] == ["m.onnx.data", "m.onnx"]
    v = np.ones((1, 512), np.float32)
    out = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": v})[0]
    np.testing.assert_allclose(out, v @ w, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------- bad input


def test_load_model_errors_name_the_problem(tmp_path):
    with pytest.raises(ExportError, match="unknown model 'tpn_r50_f8s9'.*tpn_r50_f8s8"):
        load_model("tpn_r50_f8s9")
    with pytest.raises(ExportError, match="does not exist"):
        load_model("tpn_tiny_f8s4", tmp_path / "missing.pth")


def test_load_model_reads_the_checkpoint_once_and_keeps_its_class_names(tmp_path, monkeypatch):
    model = tpn.create_model("tpn_tiny_f8s4", num_classes=3)
    ckpt = save_checkpoint(tmp_path / "m.pth", model)
    obj = torch.load(ckpt, weights_only=True)
    obj["classes"] = ["walk", "run", "jump"]
    torch.save(obj, ckpt)
    reads, real_load = [], torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **kw: reads.append(str(f)) or real_load(f, *a, **kw))
    loaded, source = load_model("tpn_tiny_f8s4", ckpt)
    assert reads == [str(ckpt)]
    assert loaded.num_classes == 3 and source.class_names == ["walk", "run", "jump"] and source.weights == "checkpoint"
    torch.testing.assert_close(loaded.state_dict(), model.state_dict())


def test_cli_unknown_model_name(capsys, tmp_path):
    assert main(["tpn_tiny_f8s5", "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "unknown model 'tpn_tiny_f8s5'" in err and "tpn_tiny_f8s4" in err and "Traceback" not in err


def test_cli_checkpoint_of_another_model(capsys, tmp_path):
    ckpt = save_checkpoint(tmp_path / "tsm.pth", tpn.create_model("tsm_tiny_baseline"))
    assert main(["tpn_tiny_f8s4", "--checkpoint", str(ckpt), "--out", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert str(ckpt) in err and "holds 'tsm_tiny_baseline'" in err and "backbone: 'tsm' -> 'slowonly'" in err
    assert not list(tmp_path.glob("*.onnx"))


@pytest.mark.slow
def test_cli_checkpoint_of_another_architecture_needs_the_flag(capsys, tmp_path):
    ckpt = save_checkpoint(tmp_path / "f8s4.pth", tpn.create_model("tpn_tiny_f8s4"))
    argv = ["tpn_tiny_pyr_f8s4", "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), "--parity-batches", "1"]
    assert main(argv) == 3  # same tensor shapes, another neck
    err = capsys.readouterr().err
    assert "neck.temporal_scales" in err and "--allow-other-architecture" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.onnx"))
    assert main([*argv, "--allow-other-architecture"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["allow_other_architecture"] is True


def test_cli_writes_onnx_and_report(tmp_path, capsys):
    ckpt = save_checkpoint(tmp_path / "m.pth", tpn.create_model("baseline_tiny_f8s4"))
    out = tmp_path / "out"
    argv = ["baseline_tiny_f8s4", "--checkpoint", str(ckpt), "--out", str(out), "--parity-batches", "2"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and report["settings"]["checkpoint"] == str(ckpt)
    recorded = read_metadata(out / "baseline_tiny_f8s4.onnx")["checkpoint_sha256"]
    assert report["onnx"]["source"]["checkpoint_sha256"] == recorded
    assert "parity vs PyTorch" in capsys.readouterr().out


def test_cli_report_says_the_zoo_weights_are_the_zoos(tmp_path, monkeypatch):
    ckpt = save_checkpoint(tmp_path / "m.pth", tpn.create_model("baseline_tiny_f8s4"))
    create = tpn.create_model

    def zoo_entry_of_ckpt(name, **kw):  # a zoo entry that publishes this file's sha256
        model = create(name, **kw)
        model.config = dataclasses.replace(model.config, weights_sha256=sha256_file(ckpt))
        return model

    monkeypatch.setattr(tpn, "create_model", zoo_entry_of_ckpt)
    out = tmp_path / "out"
    assert main(["baseline_tiny_f8s4", "--checkpoint", str(ckpt), "--out", str(out), "--parity-batches", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == "zoo" == report["onnx"]["source"]["weights"] and report["warning"] is None


def test_cli_without_checkpoint_says_random_weights_first(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["baseline_tiny_f8s4", "--out", str(out), "--parity-batches", "2"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("WARNING: random weights") and "baseline_tiny_f8s4" in first and "meaningless" in first
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == "random" and report["warning"] == first
    assert report["onnx"]["source"]["weights"] == "random"
    assert read_metadata(out / "baseline_tiny_f8s4.onnx")["weights"] == "random"


@pytest.mark.parametrize(
    "tool, argv, flag",
    [
        ("export.onnx", ["tpn_tiny_f8s4", "--size", "0"], "--size"),
        ("export.onnx", ["tpn_tiny_f8s4", "--batch", "0"], "--batch"),
        ("export.onnx", ["tpn_tiny_f8s4", "--parity-batches", "1", "0"], "--parity-batches"),
        ("export.predict", ["m.onnx", "v.mp4", "--model", "tpn_tiny_f8s4", "--max-views", "0"], "--max-views"),
        ("export.validate", ["m.onnx", "--model", "m", "--checkpoint", "c.pth", "--batch-size", "0"], "--batch-size"),
        ("export.validate", ["m.onnx", "--model", "m", "--checkpoint", "c.pth", "--max-videos", "0"], "--max-videos"),
        ("export.trt", ["tpn_tiny_f8s4", "--calib-clips", "-1"], "--calib-clips"),
        ("export.trt", ["tpn_tiny_f8s4", "--max-batch", "0"], "--max-batch"),
        ("export.trt", ["tpn_tiny_f8s4", "--max-videos", "x"], "--max-videos"),
    ],
)
def test_counts_and_sizes_below_one_are_usage_errors_naming_the_flag(tool, argv, flag, capsys):
    import importlib

    with pytest.raises(SystemExit) as err:
        importlib.import_module(tool).build_parser().parse_args(argv)
    assert err.value.code == 2
    message = capsys.readouterr().err
    assert f"argument {flag}" in message and ">= 1" in message
