"""benchmarks.train: modes, options, the proof of mode, MFU, ratios, goals, kernel categories, a CPU run."""

import json

import pytest
import torch

from benchmarks.flops import count_step_flops
from benchmarks.kernels import categorize, category_table
from benchmarks.train import main
from benchmarks.train_modes import (
    ModeSpec,
    add_speedups,
    goal_lines,
    mfu,
    mode_problem,
    mode_step_options,
    modes_for,
    parse_mode,
)
from tpn.engine import DEFAULT_COMPILE


def test_modes_per_device():
    assert modes_for("cuda", False) == [
        "fp32-eager",
        "fp32-notf32-eager",
        "bf16-cl3d-nativebn",
        "bf16-cl3d",
        "bf16-cl3d-graph",
        "bf16-cl3d-bneval-graph",
        "bf16-cl3d-compile-graph",
    ]
    assert modes_for("cuda", False, ("coordesc", DEFAULT_COMPILE))[-1] == "bf16-cl3d-compile=coordesc-graph"
    assert modes_for("cpu", False) == ["fp32-eager", "fp32-cl3d"]
    assert modes_for("cpu", True) == ["fp32-eager", "fp32-cl3d", "bf16-eager"]


@pytest.mark.parametrize(
    "mode, spec",
    [
        ("fp32-eager", ModeSpec(bf16=False)),
        ("fp32-notf32-eager", ModeSpec(bf16=False, notf32=True)),
        ("bf16-cl3d-nativebn", ModeSpec(bf16=True, cl3d=True, bn="native")),
        ("bf16-cl3d-bneval-graph", ModeSpec(bf16=True, cl3d=True, bn="eval", graph=True)),
        ("bf16-cl3d-compile-graph", ModeSpec(bf16=True, cl3d=True, compile=DEFAULT_COMPILE, graph=True)),
        ("bf16-cl3d-compile=mm1x1-graph", ModeSpec(bf16=True, cl3d=True, compile="mm1x1", graph=True)),
        ("bf16-compile=autotune", ModeSpec(bf16=True, compile="autotune")),
    ],
)
def test_parse_mode(mode, spec):
    assert parse_mode(mode) == spec


@pytest.mark.parametrize(
    "mode, message",
    [
        ("fp16-eager", "fp32 or bf16"),
        ("bf16-cl3d-fast", "unknown option 'fast'"),
        ("bf16-compile=turbo-graph", "unknown compile preset 'turbo'"),
    ],
)
def test_bad_modes_are_refused_clearly(mode, message):
    with pytest.raises(ValueError, match=message):
        parse_mode(mode)


@pytest.mark.parametrize(
    "mode, is_3d, amp, channels_last, graph, compile",
    [
        ("fp32-eager", True, None, False, False, None),
        ("bf16-cl3d", True, torch.bfloat16, True, False, None),
        ("fp32-cl3d", True, None, True, False, None),
        ("bf16-cl3d-graph", True, torch.bfloat16, True, True, None),
        ("bf16-cl3d-graph", False, torch.bfloat16, False, True, None),  # TSM: 2D convs stay NCHW
        ("bf16-cl3d-compile=coordesc-graph", True, torch.bfloat16, True, True, "coordesc"),
    ],
)
def test_step_options_per_mode(mode, is_3d, amp, channels_last, graph, compile):
    o = mode_step_options(mode, is_3d)
    assert (o.amp_dtype, o.channels_last, o.cuda_graph, o.compile, o.clip_grad) == (
        amp,
        channels_last,
        graph,
        compile,
        40.0,
    )


def report(**kw) -> dict:
    base = {"mode": "cuda-graph", "steps": 9, "graph_replays": 6, "eager_steps": 3, "fallback": None}
    return {**base, **kw}


@pytest.mark.parametrize(
    "requested, rep, problem",
    [
        ("cuda-graph", report(), None),  # 3 eager warm-up steps, then capture + 5 replays
        (
            "cuda-graph",
            report(mode="eager", graph_replays=0, eager_steps=9, fallback="CUDA graph capture failed (x)"),
            "requested cuda-graph, ran eager: CUDA graph capture failed (x)",
        ),
        ("compiled+cuda-graph", report(), "requested compiled+cuda-graph, ran cuda-graph"),
        ("cuda-graph", report(graph_replays=5, eager_steps=4), "5 graph replays and 4 eager steps for 9 calls"),
        ("cuda-graph", report(steps=8), "9 calls but 8 steps"),
        ("eager", report(mode="eager", graph_replays=0, eager_steps=9), None),
        ("eager", report(mode="eager", graph_replays=1, eager_steps=8), "1 graph replays in a mode without a graph"),
    ],
)
def test_mode_problem(requested, rep, problem):
    got = mode_problem(requested, rep, calls=9)
    assert got is None if problem is None else problem in got


def test_mfu_and_speedups_skip_failed_rows():
    assert mfu(2e12, 0.5, 8e12) == pytest.approx(0.5)
    rows = add_speedups(
        [
            {"mode": "fp32-eager", "clips_per_s": 10.0},
            {"mode": "bf16-cl3d", "clips_per_s": 25.0},
            {"mode": "bf16-cl3d-graph", "clips_per_s": 30.0, "ok": False},
        ]
    )
    assert [r["speedup"] for r in rows] == [1.0, 2.5, None]


def test_goal_lines():
    rows = [{"mode": "fp32-eager", "speedup": 1.0, "mfu": 0.1}, {"mode": "bf16-cl3d-graph", "speedup": 2.2, "mfu": 0.3}]
    met, missed, graph = goal_lines(rows, "NVIDIA H100 80GB HBM3")
    assert (
        "2.20x -> NOT met" in met
        and "30.0% -> NOT met" in missed
        and "(uncompiled) >= 2.0x" in graph
        and graph.endswith("-> met")
    )
    assert "not measurable" in goal_lines(rows[:1], "CPU")[0]
    rows.append({"mode": "bf16-cl3d-compile-graph", "speedup": 4.0, "mfu": 0.4, "layout_copies": None})
    rows.append({"mode": "bf16-cl3d-compile=mm1x1-graph", "speedup": 9.0, "mfu": 0.9, "ok": False})  # never counts
    rows[1]["layout_copies"] = 2
    met, met_too, graph, layout = goal_lines(rows, "NVIDIA H200")  # judged on the fastest compiled + captured mode
    assert met.startswith("bf16-cl3d-compile-graph") and "4.00x -> met" in met and "40.0% -> met" in met_too
    assert "NOT met (bf16-cl3d-graph: 2)" in layout


@pytest.mark.parametrize(
    "name, category",
    [
        (
            "void at::native::reduce_kernel<128, 4, at::native::ReduceOp<float, at::native::WelfordOps<c10::BFloat16",
            "normalization",
        ),
        ("void at::native::batch_norm_backward_reduce_channels_last_kernel<4, c10::BFloat16, float>", "normalization"),
        ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize128x128x64", "convolution/matmul"),
        ("nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_TNN", "convolution/matmul"),
        (
            "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)",
            "copies",
        ),
        ("void tensorTransformGeneric<__nv_bfloat16, __nv_bfloat16, float, true, false, false>", "copies"),
        ("void at::native::(anonymous namespace)::max_pool3d_with_indices_single_out_frame<c10::BFloat16>", "pooling"),
        (
            "void at::native::multi_tensor_apply_kernel<at::native::(anonymous namespace)::FusedSgdMathFunctor",
            "optimizer",
        ),
        ("void at::native::vectorized_elementwise_kernel<8, at::native::CUDAFunctor_add<c10::BFloat16>", "elementwise"),
        ("triton_poi_fused__to_copy_clone_3", "copies"),
        ("triton_poi_fused_convolution_4", "copies"),  # an input laid out for a convolution
        ("void cudnn::ops::nchwToNhwcKernel<__nv_bfloat16>", "copies"),
        ("triton_poi_fused_add_relu_threshold_backward_12", "elementwise"),
        ("triton_red_fused__native_batch_norm_legit_functional_convolution_7", "normalization"),
        ("triton_per_fused_mean_sum_2", "reduction"),
        ("triton_tem_fused_convolution_0", "convolution/matmul"),
        ("aten::mkldnn_convolution", "convolution/matmul"),
        ("aten::native_batch_norm", "normalization"),
        ("aten::clamp_min_", "elementwise"),
        ("Memset (Device)", "other"),
    ],
)
def test_kernel_categories(name, category):
    assert categorize(name) == category


def test_category_table_shares():
    rows = [
        {"category": "normalization", "ms_per_step": 3.0, "calls_per_step": 2},
        {"category": "copies", "ms_per_step": 1.0, "calls_per_step": 4},
    ]
    table = {r["category"]: r for r in category_table(rows)}
    assert table["normalization"]["share"] == pytest.approx(0.75) and table["copies"]["calls_per_step"] == 4
    assert table["elementwise"]["ms_per_step"] == 0


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


@pytest.mark.usefixtures("onednn_convolutions")
@pytest.mark.slow
def test_cpu_run_records_modes_layout_and_profile(tmp_path, monkeypatch, capsys):
    """The tiny benchmark on a CPU, with a CUDA-graph row that cannot run here: it is failed, not reported as a
    graph."""
    import benchmarks.common

    monkeypatch.setattr(benchmarks.common, "RESULTS", tmp_path)
    rc = main(
        ["--tiny", "--modes", "fp32-eager", "fp32-cl3d", "fp32-cl3d-graph", "--profile", "fp32-cl3d", "--name", "t"]
    )
    assert rc == 1  # the graph row did not run as named
    d = json.loads((tmp_path / "t.json").read_text())
    rows = {r["mode"]: r for r in d["rows"]}
    assert d["failed_rows"] == ["fp32-cl3d-graph"]
    g = rows["fp32-cl3d-graph"]
    assert (g["ok"], g["requested"], g["ran_as"], g["graph_replays"], g["speedup"]) == (
        False,
        "cuda-graph",
        "eager",
        0,
        None,
    )
    assert "need a GPU" in g["problem"] and "FAILED fp32-cl3d-graph" in capsys.readouterr().out
    cl = rows["fp32-cl3d"]
    assert cl["ok"] and cl["ran_as"] == "eager" and cl["layout_copies"] == 0 and cl["input_layout_copies"] == 1
    assert rows["fp32-eager"]["layout_copies"] is None and rows["fp32-eager"]["speedup"] == 1.0
    prof = d["profiles"]["fp32-cl3d"]
    cats = {c["category"]: c for c in prof["categories"]}
    assert cats["convolution/matmul"]["ms_per_step"] > 0 and cats["normalization"]["calls_per_step"] > 0
    assert (tmp_path / "t-profile.txt").read_text().startswith("## fp32-cl3d: CPU ops")
    assert set(d["compile_presets"]) >= {"default", "coordesc", "mm1x1", "autotune"}
    assert d["compile_presets"]["autotune"]["max_autotune"] is True


def test_compile_only_records_and_prints_what_ran(monkeypatch, capsys):
    import benchmarks.train as bt
    from tpn.engine import StepReport

    class Stub:  # a compiled contender without the compiling: what compile_only reads of one
        def __init__(self, mode):
            self.calls = 0
            report = StepReport(
                requested="compiled",
                mode="eager",
                steps=0,
                compile=DEFAULT_COMPILE,
                fallback="no compiler here",
                compile_s=None,
            )
            self.step = type("S", (), {"report": lambda _: report})()

        def __call__(self):
            self.calls += 1
            self.step.report().steps += 1

    monkeypatch.setattr(bt, "make_contender", lambda name, mode, device, batch: Stub(mode))
    plan = bt.Plan(
        name="tpn_tiny_f8s4",
        device=torch.device("cpu"),
        batch=2,
        rounds=1,
        steps=1,
        warmup=2,
        modes=("fp32", "bf16-compile"),
        profile=(),
        alternate=False,
    )
    rows = bt.compile_only(plan)
    assert [r["mode"] for r in rows] == ["bf16-compile"]  # modes without compile are skipped
    assert rows[0]["ran_as"] == "eager" and rows[0]["compile_s"] is None
    assert "requested compiled, ran eager: no compiler here" in rows[0]["problem"]
    assert "bf16-compile: compiled in - s, ran as eager" in capsys.readouterr().out
