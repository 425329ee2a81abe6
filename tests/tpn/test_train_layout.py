"""The channels_last_3d training step stays NDHWC: no layout copies, no mixed-layout ops.

Counted as benchmarks.train counts them (profiler records of `aten::copy_` with
their strides; a dispatch mode over every op of forward and backward). On a
CPU oneDNN computes conv weight gradients in NCDHW and converts them: those
are counted apart (`weight_layout_copies`) and not asserted here; the GPU test
asserts them too.
"""

import pytest
import torch
import torch.nn.functional as F

import tpn
from benchmarks.train import count_layout_copies
from tpn.layers import global_mean, upsample_nearest

CL3D = torch.channels_last_3d
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("onednn_convolutions")  # see tests/conftest.py


@pytest.mark.parametrize("name", ["tpn_tiny_f8s4", "tpn_tiny_pyr_f8s4"])
def test_tiny_tpn_step_has_no_layout_copies_on_cpu(name):
    got = count_layout_copies(name, "fp32-cl3d", CPU, 2)
    assert got["layout_copies"] == 0, got["layout_copies_by_op"]
    assert got["mixed_layout_ops"] == {}
    assert got["input_layout_copies"] == 1  # the loader's NCDHW batch, converted once per step


def test_the_count_sees_an_op_that_leaves_ndhwc(monkeypatch):
    # control: one NCDHW tensor fed to the neck's last conv is converted back (a copy) and seen
    real = tpn.create_model

    def leaky(name, **kw):
        model = real(name, **kw)
        model.neck.pyramid_fusion.register_forward_pre_hook(lambda m, args: (args[0].contiguous(),))
        return model

    monkeypatch.setattr(tpn, "create_model", leaky)
    got = count_layout_copies("tpn_tiny_f8s4", "fp32-cl3d", CPU, 2)
    assert got["layout_copies"] >= 1 and got["mixed_layout_ops"], got


def test_the_mixed_layout_check_sees_the_plain_mean_backward(monkeypatch):
    # control: x.mean(dim=(2, 3, 4)) writes an NCDHW gradient, which the ReLU backward then mixes with NDHWC
    import tpn.model
    import tpn.neck

    plain = lambda x: x.mean(dim=(2, 3, 4))  # noqa: E731
    monkeypatch.setattr(tpn.model, "global_mean", plain)
    monkeypatch.setattr(tpn.neck, "global_mean", plain)
    got = count_layout_copies("tpn_tiny_f8s4", "fp32-cl3d", CPU, 2)
    assert got["mixed_layout_ops"].get("aten.threshold_backward", 0) >= 1, got


# ------------------------------------------------------------------ the NDHWC-keeping blocks


@pytest.mark.parametrize("scale", [(1, 2, 2), (2, 1, 1), (3, 2, 1)])
def test_nearest_upsampling_keeps_ndhwc_and_equals_interpolate(scale):
    x = torch.randn(2, 4, 2, 3, 3).contiguous(memory_format=CL3D).requires_grad_()
    y = upsample_nearest(x, scale)
    expected = F.interpolate(x.detach().contiguous(), scale_factor=tuple(float(s) for s in scale), mode="nearest")
    assert torch.equal(y, expected) and y.is_contiguous(memory_format=CL3D)
    y.backward(torch.ones_like(y))
    assert x.grad.is_contiguous(memory_format=CL3D)
    assert torch.equal(x.grad, torch.full_like(x, scale[0] * scale[1] * scale[2]))  # each input fed s_t*s_h*s_w outputs


def test_global_mean_gradient_is_ndhwc():
    x = torch.randn(2, 4, 3, 5, 5).contiguous(memory_format=CL3D).requires_grad_()
    m = global_mean(x)
    torch.testing.assert_close(m, x.detach().mean(dim=(2, 3, 4)))
    m.sum().backward()
    assert x.grad.is_contiguous(memory_format=CL3D)


def test_neck_with_upsampling_keeps_ndhwc():
    got = count_layout_copies_for_upsampling_neck()
    assert got["layout_copies"] == 0 and got["mixed_layout_ops"] == {}, got


def count_layout_copies_for_upsampling_neck() -> dict:
    # the R101 pyramid (levels at T=2 and T=1) with a temporal upsampling instead of the broadcast add
    from unittest import mock

    real = tpn.create_model
    with mock.patch.object(tpn, "create_model", lambda name, **kw: real(name, upsample_scale=(2, 1, 1), **kw)):
        return count_layout_copies("tpn_tiny_pyr_f8s4", "fp32-cl3d", CPU, 2)


# ------------------------------------------------------------------ GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["tpn_tiny_f8s4", "tpn_tiny_pyr_f8s4"])
def test_tiny_tpn_bf16_step_has_no_layout_copies_on_gpu(name):
    torch.backends.cudnn.benchmark = True
    got = count_layout_copies(name, "bf16-cl3d", torch.device("cuda"), 4)
    assert got["layout_copies"] == 0, got["layout_copies_by_op"]
    assert got["weight_layout_copies"] == 0  # cuDNN writes weight gradients in the NDHWC filter layout
    assert got["mixed_layout_ops"] == {}
