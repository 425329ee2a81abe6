"""INT8 for CPUs: calibration on shards the gate does not judge, the accuracy loop, the gate and marker, OpenVINO.

A tiny TPN whose classifier is fitted to 16 synthetic validation videos
(tests.export_helpers) is exported once; calibration clips come from a
separate folder of training videos. OpenVINO is part of the test extra, so
its runner and IR are checked here; without it those tests skip.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
import torch

from export import runtime
from export.errors import EXIT_MISSING, CheckFailed, ExportError, MissingDependencyError
from export.int8 import (
    Calibration,
    calibrate,
    calibration_source,
    main as int8_main,
    quantize,
    split_held_out,
    to_int8,
)
from export.marker import check_marker
from export.onnx import export_onnx
from export.onnxfile import onnx_clip_shape, read_metadata
from export.outputs import validated_marker
from export.shards import shard_fingerprint
from export.validate import OPTIMISTIC, Thresholds, gate
from pipeline.shard import shard_dataset
from pipeline.synth import make_dataset
from tests.export_helpers import TINY, make_val_shards, trained_tiny

needs_openvino = pytest.mark.skipif(not runtime.openvino_installed(), reason="OpenVINO is not installed ([cpu] extra)")


def make_train_shards(root, per_class: int = 2):
    src = make_dataset(root / "trainsynth", train_per_class=per_class, val_per_class=0, frames=40, size=(96, 72),
                       seed=7, workers=2)  # fmt: skip
    out = root / "calib"
    shard_dataset(src / "train", out, split="train", short_side=None, workers=2)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("int8")
    shards = make_val_shards(root, per_class=2)
    calib = make_train_shards(root)
    ckpt = trained_tiny(root, shards)
    onnx_r = export_onnx(TINY, checkpoint=ckpt, out_dir=root / "out", size="test", parity_batches=(2,))
    calibration = calibrate(onnx.load(onnx_r.path), str(calib), "train", 16)
    # The classifier is fitted to the validation videos alone (on others its top classes are near ties), so
    # the accuracy loop is judged on those: calibrated as --calib-split val would, the gate then optimistic.
    on_val = calibrate(onnx.load(onnx_r.path), str(shards), "val", 16, optimistic=True)
    return dict(
        root=root, shards=shards, calib=calib, ckpt=ckpt, onnx=onnx_r.path, calibration=calibration, on_val=on_val
    )


def _copy_onnx(work, tmp_path):
    dst = tmp_path / "m.onnx"
    shutil.copy(work["onnx"], dst)
    return dst


# ----------------------------------------------------------------- calibration data


def test_calibration_takes_one_test_view_per_video_and_fingerprints_the_data(work):
    c = work["calibration"]
    assert c.clips.shape == (16, *onnx_clip_shape(onnx.load(work["onnx"]))) and c.clips.dtype == np.float32
    assert c.split == "train" and not c.optimistic and not c.notes
    assert c.fingerprint == shard_fingerprint(work["calib"], "train").sha256
    assert c.record()["clips"] == 16


def test_a_split_with_fewer_videos_than_asked_is_a_warning_naming_how_many(work):
    c = calibrate(onnx.load(work["onnx"]), str(work["calib"]), "train", 40)
    assert len(c.clips) == 16 and "holds 16 videos" in c.notes[0] and "not 40" in c.notes[0]


def test_calibrating_on_the_gates_videos_is_refused_unless_named(work):
    calib = str(work["calib"])
    # The default is the train split of the validation folder: never the gate's videos when it judges val ...
    assert calibration_source(calib, "val", None, None) == (calib, "train", False)
    # ... but a gate on the train split would be judged on its own calibration videos.
    with pytest.raises(ExportError, match="videos its Top-1 gate judges.*--calib-split"):
        calibration_source(calib, "train", None, None)
    assert calibration_source(calib, "train", calib, "train") == (calib, "train", True)  # named: optimistic
    shards = str(work["shards"])
    assert calibration_source(shards, "val", None, "val") == (shards, "val", True)
    assert calibration_source(shards, "val", calib, None) == (calib, "train", False)


def test_a_folder_without_the_split_or_without_clips_says_what_to_do(work, tmp_path):
    with pytest.raises(ExportError, match="calibration shards.*--calib-shards"):
        calibration_source(None, None, str(work["shards"]), "train")  # the val-only folder has no train split
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="calibration shards"):
        calibration_source(None, None, str(tmp_path / "empty"), None)
    with pytest.raises(ExportError, match="--calib-shards"):
        calibration_source(None, None, None, None)


def test_held_out_clips_are_a_quarter_and_at_least_sixteen_when_there_are_enough():
    clips = np.arange(64)[:, None]
    scales, held = split_held_out(clips)
    assert len(held) == 16 and len(scales) == 48 and not set(held.ravel()) & set(scales.ravel())
    scales, held = split_held_out(np.arange(200)[:, None])
    assert len(held) == 50 and len(scales) == 150
    scales, held = split_held_out(np.arange(10)[:, None])
    assert len(held) == 5 and len(scales) == 5


# ----------------------------------------------------------------- quantizing and the gate


@pytest.fixture(scope="module")
def int8(work):
    return to_int8(work["onnx"], work["on_val"])


def test_int8_files_are_named_tagged_and_bound_to_their_calibration(work, int8):
    assert int8.passed and int8.path.endswith(".int8.onnx")
    meta = read_metadata(int8.path)
    assert meta["precision"] == "int8" and meta["model"] == TINY
    assert json.loads(meta["calibration"])["fingerprint"] == work["on_val"].fingerprint
    model = onnx.load(int8.path)
    ops = {n.op_type for n in model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    weights_quantized = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(weights_quantized) > 20
    assert int8.openvino_ir is None  # only when asked for (ir=True)
    assert int8.tries[0].kept_float == [] and int8.tries[-1].held_out_agreement >= 0.99


def test_int8_passes_the_top1_gate_and_its_marker_binds_the_calibration_data(work, int8, tmp_path):
    files = [int8.path] + ([int8.openvino_ir] if int8.openvino_ir else [])
    # The tiny model's backbone is untrained (random features, small margins), which INT8 moves most: the
    # thresholds here check the flow; README's INT8 section gates the demo's trained model at the defaults.
    loose = Thresholds(min_videos=16, max_drop=20.0, min_agreement=0.8)
    reports = gate(files, model_name=TINY, checkpoint=work["ckpt"], val_shards=work["shards"], thresholds=loose)
    for r in reports:
        assert r.passed and r.precision == "int8" and r.torch_top1 == 100.0 and r.videos == 16, r.summary()
        assert OPTIMISTIC in r.notes and "optimistic" in r.summary()  # calibrated on the videos it judges
    backends = [r.backend for r in reports]
    assert backends[0] == ("openvino" if runtime.openvino_installed() else "ort-cpu")
    marker = json.loads(validated_marker(int8.path).read_text())
    assert marker["calibration"]["fingerprint"] == work["on_val"].fingerprint
    assert check_marker(int8.path).valid
    # The calibration data changes under the marker: the marker no longer holds.
    moved = tmp_path / "calib"
    shutil.copytree(work["shards"], moved)
    record = json.loads(read_metadata(int8.path)["calibration"])
    grown = next(moved.glob("*.tar"))
    grown.write_bytes(grown.read_bytes() + b"\0" * 1024)  # the fingerprint covers every shard's size
    marker["calibration"] = {**record, "location": str(moved)}
    validated_marker(int8.path).write_text(json.dumps(marker))
    check = check_marker(int8.path)
    assert not check.valid and any("calibration data changed" in p for p in check.problems)


def test_when_held_out_clips_disagree_the_most_hurt_layers_stay_float_and_a_miss_is_kept_unmarked(work, tmp_path):
    src = _copy_onnx(work, tmp_path)
    with pytest.raises(CheckFailed, match="not validated") as failed:
        to_int8(src, work["on_val"], min_agreement=1.01, max_tries=3)
    report = failed.value.report
    assert [len(t.kept_float) for t in report.tries] == [0, 1, 2]
    assert report.kept_float == report.tries[-1].kept_float and not report.passed
    kept = set(report.kept_float)
    model = onnx.load(report.path)  # kept under its name, no marker
    assert not validated_marker(report.path).exists()
    # A layer kept in float reads its weight unquantized.
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.name in kept:
            assert producers.get(node.input[1]) is None or producers[node.input[1]].op_type != "DequantizeLinear"


def test_int8_logits_stay_near_fp32(work, int8):
    x = torch.from_numpy(work["on_val"].clips[:4])
    ref = runtime.load(work["onnx"], backend="ort-cpu")(x)
    got = runtime.load(int8.path, backend="ort-cpu")(x)
    assert runtime.load(int8.path, backend="ort-cpu").precision == "int8"
    assert (got.argmax(1) == ref.argmax(1)).all()
    # A least-squares classifier on random features has huge weights, which magnify INT8's error: a third of
    # the largest logit here, where a broken scale gives garbage.
    assert float((got - ref).abs().max()) < 0.5 * float(ref.abs().max())


# ----------------------------------------------------------------- bad input


def test_int8_refuses_engines_irs_missing_files_and_non_fp32_files(work, tmp_path):
    c = work["on_val"]
    for name in ("m.engine", "m.plan", "m.xml"):
        (tmp_path / name).write_bytes(b"x")
        with pytest.raises(ExportError, match="INT8 quantizes the FP32 ONNX"):
            to_int8(tmp_path / name, c)
    with pytest.raises(ExportError, match="does not exist"):
        to_int8(tmp_path / "none.onnx", c)
    model = onnx.load(work["onnx"])
    from export.onnxfile import add_metadata

    add_metadata(model, {"precision": "fp16"})
    onnx.save(model, str(tmp_path / "h.onnx"))
    with pytest.raises(ExportError, match="not an FP32 export"):
        to_int8(tmp_path / "h.onnx", c)


def test_int8_command_names_an_unreadable_file_and_writes_nothing(work, tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    code = int8_main([str(bad), "--calib-shards", str(work["calib"])])
    assert code != 0 and "bad.onnx" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_int8_command_writes_the_file_and_its_report(work, tmp_path, capsys):
    src = _copy_onnx(work, tmp_path)
    args = [str(src), "--calib-shards", str(work["shards"]), "--calib-split", "val", "--calib-clips", "16"]
    args += ["--quantizer", "onnxruntime"]
    code = int8_main(args + (["--ir"] if runtime.openvino_installed() else []))
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "m.int8.json").read_text())
    assert report["passed"] and report["int8"]["calibration"]["clips"] == 16
    assert "quantize_static" in report["int8"]["quantizer"] and (tmp_path / "m.int8.onnx").is_file()
    assert "INT8" in capsys.readouterr().out
    if runtime.openvino_installed():
        xml = tmp_path / "m.int8.xml"
        assert xml.is_file() and xml.with_suffix(".bin").is_file()
        assert runtime.openvino_metadata(xml)["precision"] == "int8"
        ir = runtime.load(xml)
        assert ir.backend == "openvino" and ir.precision == "int8"
        x = torch.from_numpy(work["on_val"].clips[:4])
        onnx_run = runtime.load(tmp_path / "m.int8.onnx", backend="openvino")
        assert torch.allclose(ir(x), onnx_run(x), atol=1e-4)  # the same model


def test_openvino_asked_for_without_the_extra_names_it(work, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    monkeypatch.setattr(runtime, "openvino_installed", lambda: False)
    with pytest.raises(MissingDependencyError, match=r"\[cpu\]") as e:
        runtime.load(work["onnx"], backend="openvino")
    assert e.value.exit_code == EXIT_MISSING
    assert runtime.load(work["onnx"]).backend == "ort-cpu"  # auto still runs the file
    with pytest.raises(MissingDependencyError, match=r"\[cpu\]"):
        to_int8(_copy_onnx(work, tmp_path), work["on_val"], ir=True, quantizer="onnxruntime")
    monkeypatch.setitem(sys.modules, "nncf", None)
    with pytest.raises(MissingDependencyError, match=r"\[cpu\].*--quantizer onnxruntime"):
        to_int8(_copy_onnx(work, tmp_path), work["on_val"], quantizer="nncf")
    assert not list(tmp_path.glob("*.int8.*"))  # nothing published before the refusal


# ----------------------------------------------------------------- OpenVINO runtime


@needs_openvino
def test_openvino_runs_fp32_in_fp32_unless_asked_and_says_so(work):
    x = torch.from_numpy(work["on_val"].clips[:2])
    ref = runtime.load(work["onnx"], backend="ort-cpu")(x)
    f32 = runtime.load(work["onnx"], backend="openvino")
    assert f32.backend == "openvino" and f32.precision == "fp32" and f32.inference_precision == "f32"
    assert float((f32(x) - ref).abs().max()) < 1e-3
    bf16 = runtime.load(work["onnx"], backend="openvino", openvino_precision="bf16")
    assert bf16.precision in ("bf16", "fp32") and bf16.precision == (
        "bf16" if bf16.inference_precision == "bf16" else "fp32"
    )
    with pytest.raises(ExportError, match="openvino_precision"):
        runtime.load(work["onnx"], backend="openvino", openvino_precision="f16")


@needs_openvino
def test_openvino_names_a_file_it_cannot_read(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    with pytest.raises(ExportError, match="bad.onnx is not an ONNX file that can be read"):
        runtime.load(bad, backend="openvino")
    xml = tmp_path / "bad.xml"
    xml.write_text("<net><layers>")
    with pytest.raises(ExportError, match="bad.xml"):
        runtime.load(xml)
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(ExportError, match="TensorRT engine"):
        runtime.load(tmp_path / "m.engine", backend="openvino")


def test_auto_picks_openvino_on_a_cpu_for_fp32_and_int8_but_not_fp16():
    pick = lambda path, precision, ov=True: runtime.pick_backend(  # noqa: E731
        path, "auto", ort_providers=["CPUExecutionProvider"], cuda=False, openvino=ov, precision=precision
    )
    assert pick("m.onnx", "fp32") == "openvino" and pick("m.int8.onnx", "int8") == "openvino"
    assert pick("m.fp16.onnx", "fp16") == "ort-cpu" and pick("m.onnx", "fp32", ov=False) == "ort-cpu"
    assert pick("m.int8.xml", "int8") == "openvino"
    with pytest.raises(ExportError, match="OpenVINO IR"):
        runtime.pick_backend("m.xml", "ort-cpu", ort_providers=[], cuda=False)


def test_auto_takes_nncf_where_installed(monkeypatch):
    from export.int8 import resolve_quantizer

    assert resolve_quantizer("onnxruntime") == "onnxruntime" and resolve_quantizer("nncf") == "nncf"
    import importlib.util

    assert resolve_quantizer("auto") == ("nncf" if importlib.util.find_spec("nncf") else "onnxruntime")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert resolve_quantizer("auto") == "onnxruntime"


@pytest.mark.parametrize("quantizer", ["nncf", "onnxruntime"])
def test_both_quantizers_keep_the_names_they_are_told_in_float(work, tmp_path, quantizer):
    model = onnx.load(work["onnx"])
    conv = next(n.name for n in model.graph.node if n.op_type == "Conv")
    out = quantize(work["onnx"], work["on_val"].clips[:4], tmp_path / "q.onnx", [conv], quantizer=quantizer)
    q = onnx.load(str(out))
    node = next(n for n in q.graph.node if n.name == conv)
    producers = {o: n for n in q.graph.node for o in n.output}
    assert node.input[1] not in producers or producers[node.input[1]].op_type != "DequantizeLinear"
    assert read_metadata(out)["precision"] == "int8"


def test_calibration_record_is_plain_json():
    c = Calibration(np.zeros((2, 3, 1, 1, 1), np.float32), "s3://b/x", "train", "ab" * 32, optimistic=True)
    assert json.loads(json.dumps(c.record())) == {
        "location": "s3://b/x", "split": "train", "clips": 2, "fingerprint": "ab" * 32, "optimistic": True,
    }  # fmt: skip


# ----------------------------------------------------------------- export.trt --int8


@pytest.mark.slow  # the whole export (ONNX, FP16, INT8, one gate); the quick set has each step on its own
def test_export_trt_int8_makes_gates_and_reports_the_int8_file(work, tmp_path, capsys):
    from export.deploy import main as trt_main

    out = tmp_path / "exp"
    gate_args = ["--min-videos", "16", "--max-drop", "20", "--min-agreement", "0.8"]  # see the gate test above
    argv = [TINY, "--checkpoint", str(work["ckpt"]), "--out", str(out), "--val-shards", str(work["shards"])]
    code = trt_main(argv + ["--int8", "--calib-split", "val", "--calib-clips", "16", *gate_args])
    text = capsys.readouterr()
    assert code in (0, 2), text.err  # 2: no TensorRT here
    report = json.loads((out / "report.json").read_text())
    kinds = {a["kind"]: a for a in report["artifacts"]}
    assert kinds["int8"]["path"].endswith(f"{TINY}.int8.onnx") and kinds["int8"]["gate"]["passed"]
    assert kinds["int8"]["gate"]["precision"] == "int8" and OPTIMISTIC in kinds["int8"]["gate"]["notes"]
    assert report["int8"]["calibration"]["clips"] == 16 and report["int8"]["calibration"]["optimistic"]
    assert validated_marker(out / f"{TINY}.int8.onnx").is_file()
    assert "the gate judges: it is optimistic" in text.out and "int8" in text.out


@pytest.mark.slow
def test_export_trt_int8_without_nncf_still_makes_and_gates_the_onnx_files(work, tmp_path, monkeypatch, capsys):
    from export.deploy import main as trt_main

    monkeypatch.setitem(sys.modules, "nncf", None)
    out = tmp_path / "exp"
    argv = [TINY, "--checkpoint", str(work["ckpt"]), "--out", str(out), "--val-shards", str(work["shards"])]
    code = trt_main(
        argv + ["--int8", "--quantizer", "nncf", "--calib-shards", str(work["calib"]), "--min-videos", "16"]
    )
    assert code == EXIT_MISSING, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    kinds = {a["kind"]: a for a in report["artifacts"]}
    assert not kinds["int8"]["built"] and "[cpu]" in kinds["int8"]["missing"]
    assert kinds["onnx"]["gate"]["passed"] and kinds["fp16"]["gate"]["passed"]
    assert not list(out.glob("*.int8.*"))


def test_export_int8_command_refuses_an_engine_and_writes_nothing(work, tmp_path, capsys):
    engine = tmp_path / "m.fp16.engine"
    engine.write_bytes(b"engine")
    code = int8_main([str(engine), "--calib-shards", str(work["calib"])])
    assert code == 3 and "m.fp16.engine is a built engine" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp16.engine"]
