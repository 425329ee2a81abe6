"""ONNX Runtime's CUDA provider through `export.runtime`: torch CUDA tensors in and out, FP16 ONNX in FP16.

Runs where onnxruntime-gpu and a GPU are present (`pip install -e ".[gpu]"`);
the pure parts run everywhere.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import tpn
from export import runtime
from export.fp16 import to_fp16
from export.onnx import export_onnx


def test_cuda_provider_options_use_our_stream_and_no_tf32():
    (name, options), cpu = runtime.cuda_providers(1, SimpleNamespace(cuda_stream=140000123), tf32=False)
    assert name == "CUDAExecutionProvider" and cpu == "CPUExecutionProvider"
    assert options == {"device_id": "1", "user_compute_stream": "140000123", "use_tf32": "0"}
    assert runtime.cuda_providers(0, SimpleNamespace(cuda_stream=7), tf32=True)[0][1]["use_tf32"] == "1"


def test_runner_feeds_a_float16_input_in_its_own_type(tmp_path):
    """An ONNX file with FP16 I/O takes float32 torch clips and returns float32 logits."""
    x = helper.make_tensor_value_info("clips", TensorProto.FLOAT16, ["batch", 3, 2, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT16, ["batch", 3])
    node = helper.make_node("ReduceMean", ["clips", "axes"], ["logits"], keepdims=0)
    axes = onnx.numpy_helper.from_array(np.array([2, 3, 4], np.int64), "axes")
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y], [axes]), opset_imports=[helper.make_opsetid("", 20)]
    )
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    runner = runtime.load(path, backend="ort-cpu")
    assert runner.input_dtype == torch.float16 and runner.precision == "fp16"
    clips = torch.rand(2, 3, 2, 4, 4)
    out = runner(clips)
    assert out.dtype == torch.float32 and out.shape == (2, 3)
    torch.testing.assert_close(out, clips.mean(dim=(2, 3, 4)), atol=2e-3, rtol=2e-3)


def _cuda_ort() -> bool:
    return torch.cuda.is_available() and "CUDAExecutionProvider" in runtime.ort_providers()


@pytest.mark.gpu
def test_cuda_provider_runs_fp32_and_fp16_onnx_on_torch_cuda_tensors(tmp_path):
    if not _cuda_ort():
        pytest.skip("onnxruntime-gpu's CUDA provider is not available (pip install -e '.[gpu]')")
    torch.manual_seed(0)
    model = tpn.create_model("tpn_tiny_f8s4").eval()
    with torch.no_grad():  # real margins, so Top-1 agreement means something
        torch.nn.init.normal_(model.cls_head.fc_cls.weight, 0.0, 1.0)
    fp32 = export_onnx(model, out_dir=tmp_path, parity_batches=(2,)).path
    fp16 = to_fp16(fp32).path
    x = torch.randn(5, 3, 8, 112, 112, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = model(x)
    side = torch.cuda.Stream()
    for path, tol in ((fp32, 1e-4), (fp16, 2e-2)):
        runner = runtime.load(path)
        assert runner.backend == "ort-cuda" and runner.session.get_providers()[0] == "CUDAExecutionProvider"
        xc = x.cuda()
        with torch.cuda.stream(side):  # a caller on another stream gets correctly ordered results too
            side.wait_stream(torch.cuda.current_stream())
            y = runner(xc)
            y2 = y * 1.0  # consumed on the caller's stream right away, no host sync in between
        torch.cuda.current_stream().wait_stream(side)
        assert y.is_cuda and y.dtype == torch.float32 and y.shape == (5, 8)
        scale = ref.abs().max().item()
        torch.testing.assert_close(y2.cpu(), ref, atol=tol * scale, rtol=0)
        assert (y2.cpu().argmax(1) == ref.argmax(1)).float().mean() >= 0.8
    assert runtime.load(fp16).precision == "fp16"
