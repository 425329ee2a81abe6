"""ONNX Runtime sessions: one helper opens them all, with the project's options."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from export import runtime

ROOT = Path(__file__).resolve().parents[2]


def doubling_model() -> onnx.ModelProto:
    """y = x + x on (batch, 3) float32: small enough to build in a test, real enough to run."""
    x = helper.make_tensor_value_info("clips", TensorProto.FLOAT, ["batch", 3])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph([helper.make_node("Add", ["clips", "clips"], ["logits"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


@pytest.mark.parametrize("as_file", [True, False])
def test_open_session_runs_a_file_or_serialised_model(tmp_path, as_file):
    model = doubling_model()
    source: Path | bytes = model.SerializeToString()
    if as_file:
        source = tmp_path / "m.onnx"
        onnx.save(model, str(source))
    sess = runtime.open_session(source)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_array_equal(sess.run(["logits"], {"clips": x})[0], 2 * x)
    assert sess.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize(
    "threads, expected", [(None, len(os.sched_getaffinity(0))), (0, 0), (1, 1)], ids=["per-core", "ort", "one"]
)
def test_open_session_sets_threads_and_turns_spinning_off(threads, expected):
    options = runtime.open_session(doubling_model().SerializeToString(), threads=threads).get_session_options()
    assert options.intra_op_num_threads == expected  # 0: ONNX Runtime picks one per physical core
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_open_session_sets_the_optimisation_level():
    import onnxruntime as ort

    options = runtime.open_session(doubling_model().SerializeToString(), level="basic").get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC


def session_constructions(source: str) -> list[int]:
    """Lines that call `InferenceSession(...)` (as `ort.InferenceSession` or a bare name)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            if name == "InferenceSession":
                lines.append(node.lineno)
    return lines


def test_only_open_session_constructs_sessions():
    files = [*(ROOT / "export").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]
    found = {p.relative_to(ROOT).as_posix(): session_constructions(p.read_text(encoding="utf-8")) for p in files}
    found = {k: v for k, v in found.items() if v}
    assert list(found) == ["export/runtime.py"] and len(found["export/runtime.py"]) == 1
    assert session_constructions("import onnxruntime as ort\ns = ort.InferenceSession('m.onnx')") == [2]


FREE_IN_ORDER = """
import faulthandler, gc, signal, subprocess, sys
faulthandler.enable()  # gives the main thread a signal stack, as pytest does
from export import runtime
first = runtime.load(sys.argv[1], backend="openvino")
second = runtime.load(sys.argv[1], backend="openvino")
del first
gc.collect()
del second
gc.collect()
signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler runs on the signal stack
subprocess.run(["true"], check=True)  # its end sends SIGCHLD
print("alive")
"""


@pytest.mark.skipif(not runtime.openvino_installed(), reason="needs OpenVINO (the [cpu] extra)")
def test_openvino_runners_freed_in_the_order_they_were_made_leave_the_process_alive(tmp_path):
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core and puts back the one it found: with a Core
    per runner, freeing them first-made-first left a freed stack registered and the next signal killed the
    process (SIGSEGV). One Core per process keeps it alive."""
    import subprocess
    import sys

    onnx.save(doubling_model(), str(tmp_path / "m.onnx"))
    done = subprocess.run(
        [sys.executable, "-c", FREE_IN_ORDER, str(tmp_path / "m.onnx")], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0 and "alive" in done.stdout, (done.returncode, done.stderr[-2000:])
