"""benchmarks.train's profiler helpers: tensor dim orders, mixed-layout ops, copies classified by what made
them, and trace events nested into their enclosing ops (what the layout tests in tests/tpn count with)."""

import pytest

from benchmarks.layout_copies import classify_copies, dim_order, mixed_layouts, nest_records


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
    assert got == {
        "layout_copies": 1,
        "input_layout_copies": 1,
        "weight_layout_copies": 1,
        "dtype_casts": 1,
        "layout_copies_by_op": {"aten::max_pool3d_with_indices_backward in MaxPool3DWithIndicesBackward0": 1},
    }


def test_trace_events_nest_into_their_enclosing_ops():
    def ev(name, tid, ts, dur, cat="cpu_op", **args):
        return {"ph": "X", "cat": cat, "name": name, "pid": 1, "tid": tid, "ts": ts, "dur": dur, "args": args}

    events = [
        ev(
            "aten::copy_",
            1,
            12.0,
            2.0,
            **{"Input Dims": [[1], [1]], "Input Strides": [[1], [1]], "Input type": ["float"] * 2},
        ),
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
