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
from benchmarks.train import classify_copies, count_layout_copies, dim_order, mixed_layouts, nest_records
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


@pytest.mark.parametrize(
    "shape, strides, order",
    [
        ([2, 8, 4, 5, 6], [960, 120, 30, 6, 1], (0, 1, 2, 3, 4)),  # NCDHW
        ([2, 8, 4, 5, 6], [960, 1, 240, 48, 8], (0, 2, 3, 4, 1)),  # NDHWC
        ([2, 8, 1, 5, 6], [240, 1, 240, 48, 8], (0, 3, 4, 1)),  # T = 1: no order for T
        ([2, 8, 4, 5, 6], [8, 1, 0, 0, 0], (0, 1)),  # an expanded (N, C) gradient
    ],
)
def test_dim_order(shape, strides, order):
    assert dim_order(shape, strides) == order


def test_mixed_layouts():
    ncdhw, ndhwc = ([2, 8, 4, 5, 6], [960, 120, 30, 6, 1]), ([2, 8, 4, 5, 6], [960, 1, 240, 48, 8])
    assert mixed_layouts([ncdhw, ndhwc])
    assert not mixed_layouts([ndhwc, ndhwc, ([2, 8, 4, 5, 6], [8, 1, 0, 0, 0])])  # broadcast agrees with anything
    assert not mixed_layouts([ndhwc, ([16, 8, 1, 1, 1], [8, 1, 8, 8, 8])])  # a 1x1x1 conv weight
    assert not mixed_layouts([ncdhw, ([2, 8], [8, 1])])  # < 4 dims: no layout


class FakeEvent:
    def __init__(self, name, shapes=(), strides=(), dtypes=(), parent=None):
        self.name, self.input_shapes, self.structured_input_strides = name, list(shapes), list(strides)
        self.input_dtypes, self.cpu_parent = list(dtypes), parent


def test_copies_are_classified_by_what_made_them():
    nd, cl = [960, 120, 30, 6, 1], [960, 1, 240, 48, 8]
    shape = [2, 8, 4, 5, 6]
    pool_bw = FakeEvent("autograd::engine::evaluate_function: MaxPool3DWithIndicesBackward0")
    pool = FakeEvent("aten::max_pool3d_with_indices_backward", parent=pool_bw)
    conv_bw = FakeEvent("aten::convolution_backward", shapes=[shape, shape, [8, 8, 3, 1, 1]])
    from tpn.engine import INPUT_TO_NDHWC

    events = [
        FakeEvent("aten::copy_", [shape, shape], [cl, nd], ["float", "float"], FakeEvent("aten::clone", parent=pool)),
        FakeEvent("aten::copy_", [shape, shape], [cl, nd], ["float", "float"], FakeEvent(INPUT_TO_NDHWC)),
        FakeEvent("aten::copy_", [[8, 8, 3, 1, 1]] * 2, [[24, 1, 8, 8, 8], [24, 3, 1, 1, 1]], ["float"] * 2, conv_bw),
        FakeEvent("aten::copy_", [shape, shape], [cl, cl], ["c10::BFloat16", "float"]),  # a cast, same layout
        FakeEvent("aten::copy_", [[2, 8], [2, 8]], [[1, 2], [8, 1]], ["float"] * 2),  # 2-D: no layout
        FakeEvent("aten::add", [shape, shape], [cl, nd]),
    ]
    got = classify_copies(events)
    assert got == {"layout_copies": 1, "input_layout_copies": 1, "weight_layout_copies": 1, "dtype_casts": 1,
                   "layout_copies_by_op": {"aten::max_pool3d_with_indices_backward in MaxPool3DWithIndicesBackward0": 1}}  # fmt: skip


def test_trace_events_nest_into_their_enclosing_ops():
    def ev(name, tid, ts, dur, cat="cpu_op", **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": args}

    events = [
        ev("aten::copy_", 1, 12.0, 2.0, **{"Input Dims": [[1], [1]], "Input Strides": [[1], [1]], "Input type": ["float"] * 2}),
        ev("aten::clone", 1, 11.0, 4.0),
        ev("tpn.step.input_to_ndhwc", 1, 10.0, 20.0, cat="user_annotation"),
        ev("aten::add", 1, 16.0, 1.0),  # after clone ended: a sibling, inside the annotation
        ev("aten::mul", 2, 12.5, 1.0),  # another thread: no parent
        {"ph": "X", "cat": "kernel", "name": "k", "pid": 1, "tid": 1, "ts": 12.0, "dur": 1.0},  # not an op
    ]
    recs = {r.name: r for r in nest_records(events)}
    assert set(recs) == {"aten::copy_", "aten::clone", "tpn.step.input_to_ndhwc", "aten::add", "aten::mul"}
    assert recs["aten::copy_"].cpu_parent is recs["aten::clone"]
    assert recs["aten::clone"].cpu_parent is recs["aten::add"].cpu_parent is recs["tpn.step.input_to_ndhwc"]
    assert recs["aten::mul"].cpu_parent is None and recs["aten::copy_"].structured_input_strides == [[1], [1]]


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
