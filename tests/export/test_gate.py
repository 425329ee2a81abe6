"""FP16 conversion, the runtime and the Top-1 gate, on a tiny TPN whose classifier is fitted to synthetic shards.

One export (at the test-protocol size, as the gate needs) and one FP16
conversion are shared by the module; every damaged artifact or changed
input is a copy. The shards hold 16 videos (2 per class), so gates on them
pass `min_videos=16` explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import tpn
from export import runtime
from export.errors import CheckFailed, ExportError, MissingDependencyError
from export.marker import NotValidated, check_marker, load_validated
from export.outputs import validated_marker
from export.shards import shard_fingerprint, validation_split
from export.source import load_model, synthetic_clips
from export.tolerance import FP16, FP32, compare_logits
from export.validate import (
    Thresholds,
    binomial_tail,
    chance_level,
    check_view_size,
    gate,
    judge,
    videos_to_beat_chance,
    main as validate_main,
    validate,
    zoo_target,
)
from export.fp16 import activation_stats, head_nodes, node_precisions, ort_run, tidy_casts, to_fp16
from export.onnx import export_onnx
from export.onnxfile import onnx_clip_shape, read_metadata
from pipeline import DataError, sha256_file
from tpn.checkpoint import save_checkpoint
from tests.export_helpers import TINY, damage, make_val_shards, scale_initializer, trained_tiny

DAMAGED_CONV = "backbone.layer3.0.conv1.weight"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    shards = make_val_shards(root, per_class=2)
    ckpt = trained_tiny(root, shards)
    onnx_report = export_onnx(TINY, checkpoint=ckpt, out_dir=root / "out", size="test", parity_batches=(2,))
    fp16_report = to_fp16(onnx_report.path, calibration=shards)
    return dict(root=root, shards=shards, ckpt=ckpt, onnx=onnx_report, fp16=fp16_report)


# ----------------------------------------------------------------- FP16


def test_fp16_keeps_sensitive_ops_and_classifier_in_fp32(work):
    model = onnx.load(work["fp16"].path)
    prec = node_precisions(model)
    by_op = {}
    for node in model.graph.node:
        if node.name in prec:
            by_op.setdefault(node.op_type, set()).add(prec[node.name])
    assert by_op["ReduceMean"] == {TensorProto.FLOAT}  # the global pool
    assert by_op["Gemm"] == {TensorProto.FLOAT}  # the classifier
    assert by_op["Conv"] == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    kept = {k.op_type: k.reason for k in work["fp16"].kept_fp32}
    assert "sensitive" in kept["ReduceMean"] and "classifier" in kept["Gemm"]
    # no lossy FP32 -> FP16 -> FP32 round trip left between the pool and the classifier
    assert work["fp16"].casts == 2  # the input to FP16, the last features to FP32
    assert read_metadata(model)["precision"] == "fp16-mixed"


def test_calibration_run_gives_the_fp32_reference_logits(work):
    """to_fp16 checks against the logits of its calibration run instead of running the FP32 model again."""
    model = onnx.load(work["onnx"].path)
    clips = synthetic_clips(3, onnx_clip_shape(model), mean=(110.0,) * 3, std=(60.0,) * 3)
    stats, logits = activation_stats(model, clips)
    assert logits.shape == (3, 8) and stats
    assert compare_logits(logits, ort_run(model, clips), FP32).passed  # the same FP32 model, fused differently


def test_fp16_stays_within_fp16_tolerance(work):
    r = work["fp16"]
    assert r.passed and r.agreement.tolerance == "fp16"
    assert r.agreement.worst_excess <= 1.0 and r.agreement.top1_agreement == 1.0
    assert r.calibration["kind"] == "shards" and r.calibration["clips"] == 4
    assert r.agreement.max_ref_abs > 1.0  # a fitted classifier: the tolerance is not trivially met


@pytest.mark.parametrize(
    "factor, reason",
    [(1e6, "weights overflow FP16"), (1e-7, "weights underflow FP16")],
)
def test_fp16_keeps_layers_whose_weights_leave_fp16_range(work, tmp_path, factor, reason):
    model = onnx.load(work["onnx"].path)
    scale_initializer(model, DAMAGED_CONV, factor)
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    r = to_fp16(src, check=False)
    conv = next(n.name for n in model.graph.node if DAMAGED_CONV in n.input)
    kept = {k.name: k.reason for k in r.kept_fp32}
    assert kept[conv].startswith(reason)
    assert node_precisions(onnx.load(r.path))[conv] == TensorProto.FLOAT


def test_fp16_keeps_layers_whose_activations_exceed_data_max(work, tmp_path):
    r = to_fp16(work["onnx"].path, out=tmp_path / "m.fp16.onnx", data_max=1.0, check=False)
    large = [k for k in r.kept_fp32 if k.reason.startswith("activations too large")]
    assert large and all(k.op_type != "ReduceMean" for k in large)
    assert r.fp16_nodes < work["fp16"].fp16_nodes


def test_fp16_refuses_what_it_cannot_convert(work, tmp_path):
    with pytest.raises(ExportError, match="already holds FP16"):
        to_fp16(work["fp16"].path, out=tmp_path / "x.onnx")
    with pytest.raises(ExportError, match="calibration clips must be"):
        to_fp16(work["onnx"].path, out=tmp_path / "x.onnx", calibration=np.zeros((2, 3, 8, 64, 64), np.float32))
    with pytest.raises(ExportError, match="does not exist"):
        to_fp16(tmp_path / "missing.onnx")


def test_fp16_failure_is_enforced_and_not_published(work, tmp_path):
    zero = dataclasses.replace(FP16, name="zero", atol=0.0, rtol=0.0)
    with pytest.raises(CheckFailed) as err:
        to_fp16(work["onnx"].path, out=tmp_path / "m.fp16.onnx", tolerance=zero)
    assert not err.value.report.passed
    assert not (tmp_path / "m.fp16.onnx").exists()
    assert (tmp_path / "rejected" / "m.fp16.onnx").exists()


def test_fp16_command_converts_checks_and_reports(work, tmp_path, capsys):
    from export.fp16 import main as fp16_main

    out = tmp_path / "cli.fp16.onnx"
    assert fp16_main([str(work["onnx"].path), "--out", str(out), "--calib-shards", str(work["shards"])]) == 0
    printed = capsys.readouterr().out
    assert "float nodes in FP16" in printed and str(tmp_path / "cli.fp16.json") in printed
    report = json.loads((tmp_path / "cli.fp16.json").read_text())
    assert report["passed"] and report["fp16"]["calibration"]["kind"] == "shards"
    assert read_metadata(onnx.load(str(out)))["precision"] == "fp16-mixed"
    assert fp16_main([str(tmp_path / "none.onnx")]) == 3  # bad input
    assert fp16_main([str(out), "--out", str(tmp_path / "twice.fp16.onnx")]) == 3  # already FP16
    with pytest.raises(SystemExit) as usage:
        fp16_main([])
    assert usage.value.code == 2


def _graph(nodes, outputs):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    ys = [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, 4]) for o in outputs]
    w = helper.make_tensor("w", TensorProto.FLOAT, [4, 4], np.eye(4, dtype=np.float32).ravel())
    return helper.make_model(helper.make_graph(nodes, "g", [x], ys, [w]), opset_imports=[helper.make_opsetid("", 20)])


def test_head_nodes_are_those_after_the_last_global_reduction():
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m1"], name="pool1", keepdims=1),
        helper.make_node("Add", ["m1", "x"], ["a"], name="mid"),
        helper.make_node("ReduceMean", ["a"], ["m2"], name="pool2", keepdims=1),
        helper.make_node("MatMul", ["m2", "w"], ["y"], name="fc"),
    ]
    assert head_nodes(_graph(nodes, ["y"]).graph) == {"fc"}


def test_tidy_casts_removes_round_trips_and_keeps_output_names():
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["a"], name="fc"),
        helper.make_node("Cast", ["a"], ["a16"], name="down", to=TensorProto.FLOAT16),
        helper.make_node("Cast", ["a16"], ["y"], name="up", to=TensorProto.FLOAT),
        helper.make_node("Cast", ["x"], ["z"], name="noop", to=TensorProto.FLOAT),
    ]
    model = _graph(nodes, ["y", "z"])
    tidy_casts(model)
    ops = [n.op_type for n in model.graph.node]
    assert "Cast" not in ops
    assert {o.name for o in model.graph.output} == {"y", "z"}
    onnx.checker.check_model(model)
    import onnxruntime as ort

    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    y, z = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    np.testing.assert_array_equal(y, x)  # exact: no FP16 rounding left
    np.testing.assert_array_equal(z, x)


# ----------------------------------------------------------------- runtime


def test_runtime_runs_onnx_with_torch_in_and_out(work):
    runner = runtime.load(work["onnx"].path)
    model = tpn.create_model(TINY, checkpoint=work["ckpt"]).eval()
    x = torch.randn(3, 3, 8, 128, 128, generator=torch.Generator().manual_seed(0))
    y = runner(x)
    assert isinstance(y, torch.Tensor) and y.shape == (3, 8) and y.dtype == torch.float32
    with torch.inference_mode():
        torch.testing.assert_close(y, model(x), atol=1e-4, rtol=1e-3)
    assert runner.backend == ("openvino" if runtime.openvino_installed() else "ort-cpu") and runner.precision == "fp32"
    assert runtime.load(work["fp16"].path).precision == "fp16"
    with pytest.raises(ValueError, match="takes clips of shape"):
        runner(torch.zeros(1, 3, 8, 112, 112))


def test_pick_backend():
    cpu = ["CPUExecutionProvider"]
    gpu = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert runtime.pick_backend("m.onnx", "auto", ort_providers=gpu, cuda=True) == "ort-cuda"
    assert runtime.pick_backend("m.onnx", "auto", ort_providers=gpu, cuda=False) == "ort-cpu"
    assert runtime.pick_backend("m.onnx", "auto", ort_providers=cpu, cuda=True) == "ort-cpu"
    assert runtime.pick_backend("m.fp16.engine", "auto", ort_providers=cpu, cuda=True) == "trt"
    with pytest.raises(MissingDependencyError, match="onnxruntime-gpu"):
        runtime.pick_backend("m.onnx", "ort-cuda", ort_providers=cpu, cuda=True)
    with pytest.raises(ExportError, match="not a TensorRT engine"):
        runtime.pick_backend("m.onnx", "trt", ort_providers=cpu, cuda=True)


def test_runtime_names_missing_files_and_tensorrt(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        runtime.load(tmp_path / "nope.onnx")
    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"not an engine")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="pip install --extra-index-url https://pypi.nvidia.com"):
            runtime.load(engine)
    else:
        pytest.skip("TensorRT is installed: the missing-TensorRT message cannot be shown")


# ----------------------------------------------------------------- the gate without shards


def test_synthetic_gate_passes_faithful_artifacts_and_says_no_accuracy(work):
    for key in ("onnx", "fp16"):
        r = validate(work[key].path, model_name=TINY, checkpoint=work["ckpt"], synthetic=4)
        assert r.passed and r.mode == "synthetic" and not r.accuracy_validated
        assert "no accuracy was validated" in r.notes[0]
        assert r.agreement.tolerance == ("fp16" if key == "fp16" else "fp32")
        assert r.marker is None  # nothing is marked validated without accuracy


def test_synthetic_gate_fails_a_damaged_artifact(work, tmp_path):
    bad = damage(work["fp16"].path, tmp_path / f"{TINY}.fp16.onnx", DAMAGED_CONV, 1.5)
    validated_marker(bad).write_text('{"format": 2}')  # an earlier marker, which a failure must remove
    r = validate(bad, model_name=TINY, checkpoint=work["ckpt"], synthetic=4)
    assert not r.passed and r.failures and r.agreement.worst_excess > 1.0
    assert not validated_marker(bad).exists()


def test_a_passing_synthetic_check_keeps_the_marker_of_a_gate_on_shards(work, tmp_path):
    art = tmp_path / f"{TINY}.onnx"
    shutil.copy(work["onnx"].path, art)
    (r,) = _gate(work, [art])
    assert r.passed and check_marker(art).valid
    before = validated_marker(art).read_bytes()
    assert validate_main([str(art), "--model", TINY, "--checkpoint", str(work["ckpt"])]) == 0  # no --val-shards
    assert validated_marker(art).read_bytes() == before and check_marker(art).valid


def test_gate_refuses_counts_below_one(work):
    for kw in ({"batch_size": 0}, {"max_videos": 0}, {"max_videos": -3}):
        with pytest.raises(ExportError, match="must be >= 1"):
            validate(work["onnx"].path, model_name=TINY, checkpoint=work["ckpt"], val_shards=work["shards"], **kw)


def test_gate_needs_the_weights_the_artifact_came_from(work, tmp_path):
    with pytest.raises(ExportError, match="--checkpoint"):
        validate(work["onnx"].path, model_name=TINY)
    other = tpn.create_model(TINY)
    with pytest.raises(ExportError, match="other weights"):
        validate(work["onnx"].path, model_name=TINY, checkpoint=save_checkpoint(tmp_path / "other.pth", other))
    with pytest.raises(ExportError, match="exported from tpn_tiny_f8s4, not baseline_tiny_f8s4"):
        validate(work["onnx"].path, model_name="baseline_tiny_f8s4", checkpoint=work["ckpt"])


# ----------------------------------------------------------------- the gate on shards

ENOUGH = Thresholds(min_videos=16)  # the test shards' 16 videos


def _gate(work, artifacts, **kw):
    kw.setdefault("thresholds", ENOUGH)
    return gate(
        artifacts,
        model_name=TINY,
        checkpoint=kw.pop("checkpoint", work["ckpt"]),
        val_shards=kw.pop("val_shards", work["shards"]),
        **kw,
    )


def test_shard_gate_passes_the_fp16_export_of_a_fitted_model_and_binds_the_marker(work):
    onnx_r, fp16_r = _gate(work, [work["onnx"].path, work["fp16"].path])
    for r in (onnx_r, fp16_r):
        assert r.verdict == "passed" and r.passed and r.accuracy_validated and r.mode == "shards"
        assert r.torch_top1 == 100.0 and r.difference == 0.0 and r.prediction_agreement == 1.0
        assert r.videos == 16 and r.views_per_video == 6 and r.chance_top1 == 12.5 and r.chance_p_value < 1e-12
        assert [c.key for c in r.criteria] == ["videos", "chance", "top1_difference", "agreement"]
        assert all(c.passed and c.threshold is not None for c in r.criteria)
    assert fp16_r.precision == "fp16" and onnx_r.precision == "fp32"
    marker = json.loads(validated_marker(work["fp16"].path).read_text())
    assert marker["artifact"]["sha256"] == sha256_file(work["fp16"].path)
    assert marker["checkpoint"]["sha256"] == sha256_file(work["ckpt"]) and marker["model"] == TINY
    assert (
        marker["shards"]["split"] == "val"
        and marker["shards"]["fingerprint"] == shard_fingerprint(work["shards"], "val").sha256
    )
    assert marker["videos"] == 16 and marker["protocol"]["views"] == 6 and marker["thresholds"]["min_videos"] == 16
    assert marker["results"]["prediction_agreement"] == 1.0 and marker["provenance"]["toolkit"]
    assert check_marker(work["fp16"].path).valid and check_marker(work["onnx"].path, checkpoint=work["ckpt"]).valid
    assert load_validated(work["fp16"].path).precision == "fp16"


def test_gate_refuses_too_few_videos_by_default(work, tmp_path):
    art = tmp_path / f"{TINY}.onnx"
    shutil.copy(work["onnx"].path, art)
    validated_marker(art).write_text('{"format": 2}')
    (r,) = _gate(work, [art], thresholds=Thresholds())
    assert r.verdict == "refused" and not r.passed and r.thresholds.min_videos == 300
    videos = next(c for c in r.criteria if c.key == "videos")
    assert not videos.passed and videos.value == 16 and videos.threshold == 300
    assert "too few" in r.failures[0] and not validated_marker(art).exists()


@pytest.mark.slow
def test_gate_refuses_a_reference_at_chance(work, tmp_path):
    """An untrained checkpoint: its export is faithful, but no Top-1 statement can be made on it."""
    untrained = save_checkpoint(tmp_path / "untrained.pth", tpn.create_model(TINY))
    art = export_onnx(TINY, checkpoint=untrained, out_dir=tmp_path, size="test", parity_batches=(2,)).path
    (r,) = _gate(work, [art], checkpoint=untrained)
    assert r.verdict == "refused" and r.prediction_agreement == 1.0  # faithful, yet refused
    chance = next(c for c in r.criteria if c.key == "chance")
    assert not chance.passed and chance.value > 1e-3
    assert "not clearly above chance" in r.failures[0] and "untrained checkpoint" in r.failures[0]


@pytest.mark.slow
def test_gate_fails_an_artifact_of_other_weights_with_a_similar_top1(work, tmp_path):
    """Both models are right on half the videos, but not on the same half: only agreement tells them apart."""
    half = lambda wrong_odd: lambda i, y: (y + 1) % 8 if i % 2 == wrong_odd else y  # noqa: E731
    ref = trained_tiny(tmp_path, work["shards"], relabel=half(1), file="ref.pth")
    other = trained_tiny(tmp_path, work["shards"], seed=1, relabel=half(0), file="other.pth")
    art = export_onnx(TINY, checkpoint=other, out_dir=tmp_path, size="test", parity_batches=(2,)).path
    _forget_weights(art)  # as an engine, which records no weights: only the gate can tell
    (r,) = _gate(work, [art], checkpoint=ref)
    assert r.torch_top1 == 50.0 and r.artifact_top1 == 50.0 and r.difference == 0.0
    assert r.verdict == "failed" and r.prediction_agreement == 0.0
    assert [c.key for c in r.criteria if not c.passed] == ["agreement"]


@pytest.mark.slow
def test_the_gate_scores_videos_as_tpn_test_does(work, tmp_path):
    """The gate's own pass over the test views gives PyTorch the Top-1 that `tpn.evaluate.evaluate` (behind
    tpn.test and the trainer's validation) gives the same model on the same shards."""
    from pipeline import ClipLoader
    from tpn.evaluate import evaluate

    wrong_thirds = lambda i, y: (y + 3) % 8 if i % 3 == 0 else y  # noqa: E731  (6 of the 16 videos)
    ckpt = trained_tiny(tmp_path, work["shards"], relabel=wrong_thirds, file="thirds.pth")
    art = export_onnx(TINY, checkpoint=ckpt, out_dir=tmp_path, size="test", parity_batches=(2,)).path
    (r,) = _gate(work, [art], checkpoint=ckpt)
    model, _ = load_model(TINY, ckpt)
    loader = ClipLoader(work["shards"], model.config.clip, mode="test", batch_size=3, device="cpu", split="val")
    report = evaluate(model, loader, device=torch.device("cpu"))
    assert report.num_videos == r.videos == 16
    assert report.top1 == r.torch_top1 == 62.5


def _forget_weights(path) -> None:
    model = onnx.load(str(path))
    for p in model.metadata_props:
        if p.key == "tpn.checkpoint_sha256":
            p.value = ""
    onnx.save(model, str(path))


def test_marker_does_not_survive_new_weights_or_new_data(work, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(work["shards"], shards)
    ckpt = tmp_path / "ckpt.pth"
    shutil.copy(work["ckpt"], ckpt)
    art = tmp_path / f"{TINY}.fp16.onnx"
    shutil.copy(work["fp16"].path, art)
    (r,) = _gate(work, [art], checkpoint=ckpt, val_shards=shards)
    assert r.passed and check_marker(art).valid
    # the same weights elsewhere still hold; other weights do not
    assert check_marker(art, checkpoint=work["ckpt"]).valid
    other = save_checkpoint(tmp_path / "other.pth", tpn.create_model(TINY))
    assert not check_marker(art, checkpoint=other).valid
    # the recorded checkpoint changed in place
    obj = torch.load(ckpt, weights_only=True)
    obj["model"]["cls_head.fc_cls.bias"] += 1e-3
    torch.save(obj, ckpt)
    check = check_marker(art)
    assert not check.valid and "weights changed" in check.problems[0]
    with pytest.raises(NotValidated, match="weights changed"):
        load_validated(art)
    shutil.copy(work["ckpt"], ckpt)
    assert check_marker(art).valid
    # the data changed in place: another label order, then a shard rewritten
    classes = json.loads((shards / "classes.json").read_text())
    (shards / "classes.json").write_text(json.dumps(classes[::-1]))
    check = check_marker(art)
    assert not check.valid and "validation data changed" in check.problems[0]
    (shards / "classes.json").write_text(json.dumps(classes))
    assert check_marker(art).valid
    with open(next(shards.glob("val-*.tar")), "ab") as f:
        f.write(b"\0" * 512)
    assert "validation data changed" in check_marker(art).problems[0]
    assert check_marker(art, val_shards=work["shards"]).valid  # an identical copy of the data still holds


def test_marker_checks_the_artifact_and_older_markers(work, tmp_path):
    art = tmp_path / f"{TINY}.onnx"
    shutil.copy(work["onnx"].path, art)
    (r,) = _gate(work, [art])
    assert r.passed and check_marker(art).valid
    with open(art, "ab") as f:
        f.write(b"\0")
    assert "changed since it was validated" in check_marker(art).problems[0]
    validated_marker(art).write_text(json.dumps({"sha256": sha256_file(art), "gate": {}}))
    assert "older toolkit" in check_marker(art).problems[0]


def test_shard_gate_cli_fails_a_damaged_artifact(work, tmp_path):
    bad = damage(work["onnx"].path, tmp_path / f"{TINY}.onnx", DAMAGED_CONV, -1.0)
    validated_marker(bad).write_text('{"sha256": "stale"}')
    argv = [
        str(bad),
        "--model",
        TINY,
        "--checkpoint",
        str(work["ckpt"]),
        "--val-shards",
        str(work["shards"]),
        "--min-videos",
        "16",
    ]
    assert validate_main(argv) == 1
    gate_json = json.loads((tmp_path / f"{TINY}.onnx.gate.json").read_text())["gate"]
    assert gate_json["verdict"] == "failed" and not gate_json["passed"]
    assert (
        abs(gate_json["difference"]) > gate_json["thresholds"]["max_drop"]
        and "below PyTorch" in gate_json["failures"][0]
    )
    assert {c["key"]: c["passed"] for c in gate_json["criteria"]}["top1_difference"] is False
    assert not validated_marker(bad).exists() and not check_marker(bad).valid


def test_a_missing_split_names_the_splits_present(work, capsys):
    assert validation_split(work["shards"], "val") == "val" and validation_split(work["shards"], "all") is None
    with pytest.raises(ExportError, match=r"no 'test' split.*splits present: val"):
        validation_split(work["shards"], "test")
    argv = [
        work["onnx"].path,
        "--model",
        TINY,
        "--checkpoint",
        str(work["ckpt"]),
        "--val-shards",
        str(work["shards"]),
        "--split",
        "train",
    ]
    assert validate_main(argv) == 3
    assert "splits present: val" in capsys.readouterr().err


def test_shard_gate_refuses_views_of_another_size():
    class Fake:
        input_shape = (None, 3, 8, 112, 112)

    with pytest.raises(ExportError, match="--size test"):
        check_view_size(Fake(), (128, 128), TINY)
    check_view_size(Fake(), (112, 112), TINY)  # the right size passes


class BrokenLoader:
    """A ClipLoader stand-in whose shards open but whose videos stop decoding after `good` batches."""

    closed: list[bool] = []

    def __init__(self, shards, clip, *, batch_size, good=0, **kw):
        self.clip, self.batch_size, self.good, self.num_classes = clip, batch_size, good, 8

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        BrokenLoader.closed.append(True)

    def __iter__(self):
        c = self.clip
        for _ in range(self.good):
            yield (
                torch.zeros(self.batch_size, c.num_test_views, 3, c.frames, c.test_crop, c.test_crop),
                torch.zeros(self.batch_size, dtype=torch.long),
            )
        raise DataError("val-000000.tar, sample v1: DALI could not decode it")


@pytest.fixture
def broken_loader(monkeypatch):
    import pipeline

    BrokenLoader.closed = []
    monkeypatch.setattr(pipeline, "ClipLoader", BrokenLoader)
    return BrokenLoader


def test_undecodable_videos_become_export_errors_and_the_loader_is_closed(work, broken_loader, tmp_path):
    with pytest.raises(ExportError, match="cannot read calibration shards .*could not decode"):
        to_fp16(work["onnx"].path, out=tmp_path / "m.fp16.onnx", calibration=work["shards"])
    assert broken_loader.closed == [True] and not (tmp_path / "m.fp16.onnx").exists()
    with pytest.raises(ExportError, match="cannot read validation shards .*could not decode"):
        _gate(work, [work["onnx"].path])
    assert broken_loader.closed == [True, True]


def test_calibration_stops_early_and_closes_the_loader(work, broken_loader, monkeypatch, tmp_path):
    import pipeline

    monkeypatch.setattr(pipeline, "ClipLoader", lambda *a, **kw: BrokenLoader(*a, good=3, **kw))
    r = to_fp16(work["onnx"].path, out=tmp_path / "m.fp16.onnx", calibration=work["shards"], num_clips=2)
    assert r.calibration["clips"] == 2 and broken_loader.closed == [True]


# ----------------------------------------------------------------- the verdict (pure)


DEFAULT = Thresholds(min_videos=10)


def _scores(pred: list[int], k: int = 4) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(pred), k).float()


def test_binomial_tail_and_chance():
    assert binomial_tail(2, 2, 0.5) == pytest.approx(0.25)
    assert binomial_tail(1, 3, 0.5) == pytest.approx(0.875)
    exact = sum(math.comb(20, i) * 0.25**i * 0.75 ** (20 - i) for i in range(9, 21))
    assert binomial_tail(9, 20, 0.25) == pytest.approx(exact, rel=1e-9)
    assert binomial_tail(0, 5, 0.3) == 1.0
    assert chance_level(torch.tensor([0, 1, 2, 3]), 4) == 0.25
    assert chance_level(torch.tensor([0, 0, 0, 1]), 4) == 0.75  # always guessing 0 scores 75%


def test_judge_table():
    labels = torch.arange(12) % 4
    right = _scores(labels.tolist())
    r = judge(DEFAULT, right, right, labels, zoo_top1=None)
    assert r.verdict == "passed" and r.difference == 0.0
    # one changed video of 12 is 8.3 points, in either direction
    worse, better = labels.clone(), labels.clone()
    worse[0], better[0] = 1, 1
    ref_one_wrong = _scores(better.tolist())
    r = judge(DEFAULT, _scores(worse.tolist()), right, labels, zoo_top1=None)
    assert r.verdict == "failed" and r.difference == pytest.approx(-100 / 12) and "below PyTorch" in r.failures[0]
    r = judge(DEFAULT, right, ref_one_wrong, labels, zoo_top1=None)
    assert r.verdict == "failed" and r.difference == pytest.approx(100 / 12) and "another model" in r.failures[0]
    # same Top-1, other videos right: only agreement fails
    shifted = labels.clone()
    shifted[0], shifted[1] = 1, 2
    r = judge(
        Thresholds(min_videos=10, max_drop=50.0),
        _scores(shifted.tolist()),
        _scores(better.tolist()),
        labels,
        zoo_top1=None,
    )
    assert [c.key for c in r.criteria if not c.passed] == ["agreement"] and r.verdict == "failed"
    # the zoo target
    r = judge(DEFAULT, right, right, labels, zoo_top1=100.2)
    assert r.passed and r.zoo_checked and r.criteria[-1].key == "zoo"
    r = judge(DEFAULT, right, right, labels, zoo_top1=105.0)
    assert r.verdict == "failed" and "zoo" in r.failures[0]


def test_judge_refuses_before_judging():
    labels = torch.arange(12) % 4
    r = judge(Thresholds(min_videos=13), _scores(labels.tolist()), _scores(labels.tolist()), labels, zoo_top1=None)
    assert r.verdict == "refused" and "too few" in r.failures[0]
    constant = _scores([0] * 12)  # always class 0: 25%, exactly chance
    r = judge(DEFAULT, constant, constant, labels, zoo_top1=None)
    assert r.verdict == "refused" and r.chance_p_value > 0.5 and "likely causes" in r.failures[0]
    assert "--chance-alpha 0.001" in r.failures[0]


def test_a_set_too_small_for_the_chance_test_says_so_and_how_many_videos_it_needs():
    # 6 videos of 3 classes: even 6/6 correct has p = (1/3)^6 = 0.00137 > 0.001
    labels = torch.arange(6) % 3
    r = judge(Thresholds(min_videos=1), _scores(labels.tolist()), _scores(labels.tolist()), labels, zoo_top1=None)
    assert r.verdict == "refused" and r.torch_top1 == 100.0
    assert "too few for the chance test to pass at all" in r.failures[0] and "6/6 correct" in r.failures[0]
    assert "needs at least 7 videos" in r.failures[0] and "--chance-alpha" in r.failures[0]
    assert "likely causes" not in r.failures[0]  # neither the split, the shards nor the checkpoint is to blame
    assert videos_to_beat_chance(1 / 3, 0.001) == 7 and (1 / 3) ** 7 <= 0.001 < (1 / 3) ** 6
    assert videos_to_beat_chance(0.5, 0.25) == 2 and videos_to_beat_chance(1.0, 0.001) == 0


def test_zoo_target_only_for_the_zoo_weights(work):
    model, ckpt = tpn.create_model(TINY), work["ckpt"]
    _, source = load_model(TINY, ckpt)
    assert source.weights == "checkpoint"
    target, note = zoo_target(model, source, None)
    assert target is None and "not checked" in note
    # a zoo entry that records this checkpoint's sha256 (and a published Top-1)
    model.config = dataclasses.replace(model.config, weights_sha256=sha256_file(ckpt), top1=70.0)
    _, source = load_model(model, ckpt)
    assert source.weights == "zoo"
    assert zoo_target(model, source, None) == (70.0, None)
    assert zoo_target(model, source, False) == (None, None)


def test_a_zoo_check_without_a_published_top1_fails_before_any_video_is_decoded(work, monkeypatch):
    import export.validate

    assert tpn.get_config(TINY).top1 is None

    def no_pass(*args, **kwargs):
        raise AssertionError("the shards were read before the settings were checked")

    monkeypatch.setattr(export.validate, "shard_pass", no_pass)
    with pytest.raises(ExportError, match="no published Top-1"):
        _gate(work, [work["onnx"].path], zoo_checkpoint=True)
    (r,) = _gate(work, [work["onnx"].path], val_shards=None, zoo_checkpoint=True, synthetic=2)
    assert r.mode == "synthetic" and r.passed  # without shards there is no Top-1 to hold to the zoo's
