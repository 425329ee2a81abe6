"""TensorRT: version-dependent build flags and profile shapes (pure), the CLI without TensorRT, a real build on a
GPU."""

from __future__ import annotations

import enum
import json
from types import SimpleNamespace

import pytest
import torch

import tpn
from export.errors import ExportError, MissingDependencyError
from export.deploy import ArtifactResult, export_status, resolve_size
from export.engine import NO_GPU, build_engine, build_mode, missing_requirements, profile_shapes
from export.deploy import main
from export.marker import check_marker
from tests.export_helpers import TINY, make_val_shards, trained_tiny


def fake_trt(version: str, *, fp16: bool, strongly_typed: bool) -> SimpleNamespace:
    """A stand-in for the `tensorrt` module with just the enums `build_mode` reads."""
    flags = ["TF32"] + (["FP16"] if fp16 else [])
    net = ["STRONGLY_TYPED"] if strongly_typed else []
    return SimpleNamespace(
        __version__=version,
        BuilderFlag=enum.IntEnum("BuilderFlag", flags, start=0),
        NetworkDefinitionCreationFlag=enum.IntEnum("NetworkDefinitionCreationFlag", ["EXPLICIT_BATCH", *net], start=0),
    )


TRT11 = fake_trt("11.4.0", fp16=False, strongly_typed=True)
TRT10 = fake_trt("10.13.0", fp16=True, strongly_typed=True)
TRT_OLD = fake_trt("8.6.1", fp16=True, strongly_typed=False)


def test_tensorrt_11_is_always_strongly_typed_without_fp16_flag():
    mode = build_mode(TRT11)
    assert mode.typing == "strong" and mode.network_flags == 0 and mode.builder_flags == ()
    with pytest.raises(ExportError, match="no weak typing"):
        build_mode(TRT11, "weak")


def test_tensorrt_10_strong_typing_takes_precision_from_the_onnx():
    mode = build_mode(TRT10)
    assert mode.typing == "strong" and mode.network_flags == 1 << 1 and mode.builder_flags == ()


def test_tensorrt_10_weak_typing_sets_the_fp16_flag():
    mode = build_mode(TRT10, "weak")
    assert mode.typing == "weak" and mode.network_flags == 0 and mode.builder_flags == ("FP16",)
    assert build_mode(TRT_OLD).builder_flags == ("FP16",)
    with pytest.raises(ExportError, match="STRONGLY_TYPED"):
        build_mode(TRT_OLD, "strong")


@pytest.mark.parametrize(
    "opt, max_, expected",
    [
        (8, 32, {"min": (1, 3, 8, 224, 224), "opt": (8, 3, 8, 224, 224), "max": (32, 3, 8, 224, 224)}),
        (1, 1, {"min": (1, 3, 8, 224, 224), "opt": (1, 3, 8, 224, 224), "max": (1, 3, 8, 224, 224)}),
    ],
)
def test_profile_shapes(opt, max_, expected):
    assert profile_shapes((3, 8, 224, 224), opt_batch=opt, max_batch=max_) == expected


@pytest.mark.parametrize("opt, max_", [(16, 8), (0, 8)])
def test_profile_shapes_reject_impossible_batches(opt, max_):
    with pytest.raises(ExportError, match="min_batch <= opt_batch <= max_batch"):
        profile_shapes((3, 8, 224, 224), opt_batch=opt, max_batch=max_)


def test_missing_requirements_say_what_and_how():
    def absent():
        raise MissingDependencyError("TensorRT is not installed: pip install ...")

    assert missing_requirements(lambda: None, cuda=True) is None
    text = missing_requirements(absent, cuda=False)
    assert "TensorRT is not installed" in text and NO_GPU in text
    assert missing_requirements(lambda: None, cuda=False) == NO_GPU


def test_size_follows_the_gate():
    assert resolve_size("auto", "shards/") == "test"
    assert resolve_size("auto", None) == "train"
    assert resolve_size((256, 340), "shards/") == (256, 340)


def _trt_usable() -> bool:
    return missing_requirements() is None


def test_build_engine_refuses_without_tensorrt_or_gpu(tmp_path):
    if _trt_usable():
        pytest.skip("TensorRT and a GPU are present here")
    src = tmp_path / "m.fp16.onnx"
    src.write_bytes(b"")
    with pytest.raises(MissingDependencyError) as err:
        build_engine(src, out=tmp_path / "m.fp16.engine")
    assert err.value.exit_code == 2 and not (tmp_path / "m.fp16.engine").exists()


def test_the_engine_is_on_disk_before_it_gets_its_name(tmp_path, monkeypatch):
    """build_engine's file handling, with TensorRT's build replaced by a fixed plan."""
    import onnx

    import export.engine

    x = onnx.helper.make_tensor_value_info("clips", onnx.TensorProto.FLOAT, ["batch", 3, 8, 16, 16])
    y = onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", 3, 8, 16, 16])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["clips"], ["logits"])], "g", [x], [y])
    src = tmp_path / "m.fp16.onnx"
    onnx.save(onnx.helper.make_model(graph), str(src))
    synced = []
    monkeypatch.setattr(export.engine, "missing_requirements", lambda: None)
    monkeypatch.setattr(export.engine, "import_tensorrt", lambda: TRT10)
    monkeypatch.setattr(export.engine, "_build", lambda *a: (b"engine plan", False, b"cache"))
    monkeypatch.setattr(export.engine, "fsync_file", lambda p: synced.append((p.parent != tmp_path, p.read_bytes())))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "a GPU")
    r = build_engine(src)
    assert synced == [(True, b"engine plan")]  # fsynced in the staging folder, before publishing
    assert (tmp_path / "m.fp16.engine").read_bytes() == b"engine plan" and r.profile["opt"] == [8, 3, 8, 16, 16]
    assert (tmp_path / "timing.cache").read_bytes() == b"cache"


def test_cli_without_checkpoint_or_tensorrt_says_random_weights_first_and_exits_2(tmp_path, capsys):
    if _trt_usable():
        pytest.skip("TensorRT and a GPU are present here: the missing-dependency path cannot run")
    out = tmp_path / "out"
    assert main(["baseline_tiny_f8s4", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    first = captured.out.splitlines()[0]
    assert first.startswith("WARNING: random weights") and "gates" in first and "meaningless" in first
    err = captured.err
    assert "no engine was built" in err and "Traceback" not in err
    if missing_requirements(cuda=True):  # TensorRT itself is missing, not just the GPU
        assert "pip install --extra-index-url https://pypi.nvidia.com tensorrt" in err
    said = captured.out + captured.err
    assert said.count("TensorRT builds and runs engines on an NVIDIA GPU") <= 1  # the full reason once
    assert (
        said.count("pip install --extra-index-url") <= 1
        and "(TensorRT is not installed and no CUDA GPU" in (said)
        or not missing_requirements(cuda=True)
    )
    assert (out / "baseline_tiny_f8s4.onnx").is_file() and (out / "baseline_tiny_f8s4.fp16.onnx").is_file()
    assert not list(out.glob("*.engine")) and not list(out.glob("*.validated.json"))
    report = json.loads((out / "report.json").read_text())
    assert report["weights"] == "random" and report["warning"] == first
    assert report["engine"]["built"] is False and not report["passed"] and report["status"] == 2
    assert report["onnx"]["passed"] and report["fp16"]["passed"]
    kinds = {a["kind"]: a for a in report["artifacts"]}
    assert kinds["engine"]["built"] is False
    # without shards each ONNX file gets the synthetic logit check, which validates no accuracy
    for k in ("onnx", "fp16"):
        assert kinds[k]["gate"]["mode"] == "synthetic" and kinds[k]["gate"]["passed"]


@pytest.mark.slow
def test_cli_without_tensorrt_gates_and_marks_both_onnx_files_and_exits_2(tmp_path, capsys):
    if _trt_usable():
        pytest.skip("TensorRT and a GPU are present here: the missing-engine path cannot run")
    shards = make_val_shards(tmp_path, per_class=2)
    ckpt = trained_tiny(tmp_path, shards)
    out = tmp_path / "out"
    argv = [TINY, "--checkpoint", str(ckpt), "--out", str(out), "--val-shards", str(shards), "--min-videos", "16"]
    assert main(argv) == 2
    text = capsys.readouterr().out
    assert "random weights" not in text
    summary = text[text.index("artifacts:") :]
    assert summary.count("gate PASSED") == 2 and "engine not built" in summary
    for name in (f"{TINY}.onnx", f"{TINY}.fp16.onnx"):
        assert check_marker(out / name, checkpoint=ckpt, val_shards=shards).valid, name
    report = json.loads((out / "report.json").read_text())
    gates = {a["kind"]: a["gate"] for a in report["artifacts"] if a["gate"]}
    assert set(gates) == {"onnx", "fp16"} and report["status"] == 2 and report["weights"] == "checkpoint"
    assert all(g["verdict"] == "passed" and g["videos"] == 16 and g["marker"] for g in gates.values())
    assert report["settings"]["split"] == "val"


def test_export_status():
    class Gate:
        def __init__(self, passed):
            self.passed = passed

    ok, bad = (
        ArtifactResult("onnx", "m.onnx", True, Gate(True)),
        ArtifactResult("fp16", "m.fp16.onnx", True, Gate(False)),
    )
    missing = ArtifactResult("engine", None, False, missing="TensorRT is not installed")
    assert export_status([ok]) == 0
    assert export_status([ok, missing]) == 2
    assert export_status([ok, bad, missing]) == 1  # a failed gate outranks the missing engine


def test_cli_bad_input_exits_3_before_any_work(tmp_path, capsys):
    assert main(["no_such_model", "--out", str(tmp_path)]) == 3
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.gpu
def test_engine_builds_and_matches_the_fp16_onnx(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (see export.runtime.TRT_INSTALL)")
    from export import runtime
    from export.fp16 import to_fp16
    from export.onnx import export_onnx

    torch.manual_seed(0)
    model = tpn.create_model("tpn_tiny_f8s4").eval()
    onnx_path = export_onnx(model, out_dir=tmp_path, parity_batches=(2,)).path
    fp16 = to_fp16(onnx_path).path
    r = build_engine(fp16, max_batch=4, opt_batch=2)
    assert r.profile["max"][0] == 4 and (tmp_path / "timing.cache").stat().st_size > 0
    engine = runtime.load(r.path)
    x = torch.randn(6, 3, 8, 112, 112, generator=torch.Generator().manual_seed(0))  # > max_batch: split
    y = engine(x).cpu()
    ref = runtime.load(fp16, backend="ort-cpu")(x)
    torch.testing.assert_close(y, ref, atol=1e-3, rtol=1e-2)
    assert build_engine(fp16, max_batch=4, opt_batch=2).timing_cache_loaded
