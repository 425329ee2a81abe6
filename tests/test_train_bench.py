"""benchmarks.train: the pure parts (modes, options, MFU, ratios, goals) and the FLOP count."""

import pytest
import torch

from benchmarks.train import add_speedups, count_step_flops, goal_lines, mfu, modes_for, step_options


def test_modes_per_device():
    assert modes_for("cuda", False) == ["fp32-eager", "fp32-notf32-eager", "bf16-cl3d", "bf16-cl3d-graph", "bf16-cl3d-compile-graph"]
    assert modes_for("cpu", False) == ["fp32-eager"]
    assert modes_for("cpu", True) == ["fp32-eager", "bf16-eager"]


@pytest.mark.parametrize(
    "mode, device, is_3d, amp, channels_last, graph",
    [
        ("fp32-eager", "cuda", True, None, False, False),
        ("bf16-cl3d", "cuda", True, torch.bfloat16, True, False),
        ("bf16-cl3d-graph", "cuda", True, torch.bfloat16, True, True),
        ("bf16-cl3d-graph", "cuda", False, torch.bfloat16, False, True),  # TSM: 2D convs stay NCHW
        ("bf16-eager", "cpu", True, torch.bfloat16, False, False),
        ("bf16-cl3d-compile-graph", "cuda", True, torch.bfloat16, True, True),
    ],
)
def test_step_options_per_mode(mode, device, is_3d, amp, channels_last, graph):
    o = step_options(mode, device, is_3d)
    assert (o.amp_dtype, o.channels_last, o.cuda_graph, o.clip_grad) == (amp, channels_last, graph, 40.0)
    assert o.compile == ("compile" in mode)


def test_mfu_and_speedups():
    assert mfu(2e12, 0.5, 8e12) == pytest.approx(0.5)
    rows = add_speedups([{"mode": "fp32-eager", "clips_per_s": 10.0}, {"mode": "bf16-cl3d", "clips_per_s": 25.0}])
    assert [r["speedup"] for r in rows] == [1.0, 2.5]


def test_goal_lines():
    rows = [{"mode": "fp32-eager", "speedup": 1.0, "mfu": 0.1}, {"mode": "bf16-cl3d-graph", "speedup": 3.2, "mfu": 0.3}]
    met, missed = goal_lines(rows, "NVIDIA H100 80GB HBM3")
    assert "3.20x -> met" in met and "30.0% -> NOT met" in missed
    assert "not measurable" in goal_lines(rows[:1], "CPU")[0]
    rows.append({"mode": "bf16-cl3d-compile-graph", "speedup": 4.0, "mfu": 0.4})
    met, met_too = goal_lines(rows, "NVIDIA H100 80GB HBM3")  # judged on the fastest captured mode
    assert met.startswith("bf16-cl3d-compile-graph") and "4.00x -> met" in met and "40.0% -> met" in met_too


def test_step_flops_are_counted_from_the_model():
    # forward + backward of a training step: about 3x the forward FLOPs, linear in the batch
    one, two = count_step_flops("tpn_tiny_f8s4", 1), count_step_flops("tpn_tiny_f8s4", 2)
    assert two == pytest.approx(2 * one)
    from torch.utils.flop_counter import FlopCounterMode

    import tpn

    with torch.device("meta"):
        model = tpn.create_model("tpn_tiny_f8s4")
        x = torch.empty(1, *tpn.get_config("tpn_tiny_f8s4").input_shape)
    with FlopCounterMode(display=False) as fwd:
        model.forward_train(x)
    assert 2.5 * fwd.get_total_flops() < one < 3.5 * fwd.get_total_flops()
