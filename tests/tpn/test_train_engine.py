"""The training step: losses, clipping, SGD wiring, lr updates, loss read-back, graph vs eager (GPU)."""

import copy
import logging

import pytest
import torch
import torch.nn.functional as F

import tpn
from tpn.distributed import DistEnv
from tpn.engine import (
    COMPILE_PRESETS,
    DEFAULT_COMPILE,
    LossLog,
    LossModule,
    StepOptions,
    StepReport,
    TrainStep,
    build_optimizer,
    compile_options,
    cudnn_problem,
    graph_unavailable,
    pin_device_lr,
    set_lr,
    step_mode,
)

CPU = torch.device("cpu")


def tiny_batch(n: int = 2, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, size, size, generator=g), torch.randint(0, 8, (n,), generator=g)


def test_loss_adds_the_weighted_auxiliary_loss():
    torch.manual_seed(0)
    model = tpn.create_model("tpn_tiny_f8s4").eval()  # eval: no dropout, so both passes agree
    x, y = tiny_batch()
    logits, aux = model.forward_train(x)
    assert aux is not None
    expected = F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(aux, y)
    assert torch.allclose(LossModule(model, 0.5)(x, y), expected)
    assert torch.allclose(LossModule(model, 0.0)(x, y), F.cross_entropy(logits, y))


def test_loss_without_auxiliary_head_is_plain_cross_entropy():
    torch.manual_seed(0)
    model = tpn.create_model("baseline_tiny_f8s4").eval()
    x, y = tiny_batch()
    assert torch.allclose(LossModule(model, 0.5)(x, y), F.cross_entropy(model(x), y))


def flat_params(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_clipping_bounds_the_first_update():
    # First Nesterov step with wd 0: update = lr * (1 + momentum) * clipped grad, so its norm is
    # lr * 1.9 * max_norm whenever the raw gradient norm exceeds max_norm.
    torch.manual_seed(0)
    model = tpn.create_model("baseline_tiny_f8s4", dropout=0.0)
    before = flat_params(model)
    opt = build_optimizer(list(model.parameters()), lr=1.0, momentum=0.9, nesterov=True, weight_decay=0.0, device=CPU)
    step = TrainStep(LossModule(model, 0.5), opt, StepOptions(clip_grad=1e-3), CPU)
    step(*tiny_batch())
    assert (flat_params(model) - before).norm().item() == pytest.approx(1.9e-3, rel=1e-3)


def test_eager_step_matches_a_hand_written_sgd_step():
    torch.manual_seed(0)
    model = tpn.create_model("tpn_tiny_f8s4", dropout=0.0)
    model.neck.aux_head.dropout.p = 0.0  # no random masks: both copies must see the same net
    ref = copy.deepcopy(model)
    opt = build_optimizer(list(model.parameters()), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, device=CPU)
    step = TrainStep(LossModule(model, 0.5), opt, StepOptions(clip_grad=40.0), CPU)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    for i in range(3):
        x, y = tiny_batch(seed=i)
        loss = step(x, y)
        ref_opt.zero_grad()
        logits, aux = ref.forward_train(x)
        ref_loss = F.cross_entropy(logits, y) + 0.5 * F.cross_entropy(aux, y)
        ref_loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 40.0)
        ref_opt.step()
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
        assert not loss.requires_grad
    assert torch.allclose(flat_params(model), flat_params(ref), atol=1e-6)
    assert step.mode == "eager"


def test_set_lr_on_float_and_device_tensor_rates():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(list(model.parameters()), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0, device=CPU)
    set_lr(opt, 0.5)
    assert opt.param_groups[0]["lr"] == 0.5
    # The CUDA path keeps the lr in a tensor; set_lr must write into the same storage.
    lr_t = torch.tensor(0.1)
    opt.param_groups[0]["lr"] = lr_t
    ptr = lr_t.data_ptr()
    set_lr(opt, 0.25)
    assert opt.param_groups[0]["lr"] is lr_t and lr_t.data_ptr() == ptr and lr_t.item() == 0.25
    pin_device_lr(opt, CPU)  # no-op on CPU
    assert opt.param_groups[0]["lr"] is lr_t


@pytest.mark.parametrize(
    "device, opts, reason",
    [
        ("cpu", StepOptions(), "need a GPU"),
        ("cuda", StepOptions(cuda_graph=False), "turned off"),
        ("cuda", StepOptions(warmup_iters=0), "warm-up"),
        ("cuda", StepOptions(), None),
    ],
)
def test_when_the_step_can_be_captured(device, opts, reason):
    got = graph_unavailable(torch.device(device), opts)
    assert got is None if reason is None else reason in got


@pytest.mark.parametrize(
    "version, amp, expect",
    [
        (None, True, None),
        (91500, True, None),
        (91900, True, None),
        (91000, True, "turned off"),  # 9.8-9.14: wrong bf16 3D convs
        (91000, False, "may be slow"),
        (90700, True, "may be slow"),
    ],
)
def test_cudnn_version_gate(version, amp, expect):
    got = cudnn_problem(version, amp)
    assert got is None if expect is None else expect in got


def test_loss_log_reads_back_per_step_records():
    log = LossLog(3, CPU)
    for i, v in enumerate([2.0, 1.5, float("nan")]):
        assert len(log) == i
        log.add(torch.tensor(v), step=i + 1, epoch=0, lr=0.1 * (i + 1))
    assert len(log) == 3
    records = log.drain(DistEnv())
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["loss"] == 2.0 and records[1]["loss"] == 1.5 and records[2]["loss"] != records[2]["loss"]
    assert records[2]["lr"] == pytest.approx(0.3)
    assert len(log) == 0 and log.drain(DistEnv()) == []


def test_channels_last_reformats_only_5d_clips_and_still_learns_on_cpu():
    torch.manual_seed(0)
    model = tpn.create_model("baseline_tiny_f8s4", dropout=0.0)
    opt = build_optimizer(list(model.parameters()), lr=0.05, momentum=0.9, nesterov=True, weight_decay=0, device=CPU)
    step = TrainStep(LossModule(model, 0.5), opt, StepOptions(channels_last=True), CPU)
    x, y = tiny_batch(4)  # (N, C, T, H, W)
    ndhwc = step._prepare(x)
    assert (
        ndhwc.is_contiguous(memory_format=torch.channels_last_3d)
        and not x.is_contiguous(memory_format=torch.channels_last_3d)
        and torch.equal(ndhwc, x)
    )
    frames = x[:, :, 0]  # (N, C, H, W): a 4-D input is passed through untouched
    assert step._prepare(frames) is frames
    plain = TrainStep(LossModule(model, 0.5), opt, StepOptions(channels_last=False), CPU)
    assert plain._prepare(x) is x
    first = step(x, y).item()
    for _ in range(5):
        last = step(x, y).item()
    assert last < first


def tiny_step(opts: StepOptions) -> TrainStep:
    torch.manual_seed(0)
    model = tpn.create_model("baseline_tiny_f8s4", dropout=0.0)
    opt = build_optimizer(list(model.parameters()), lr=0.01, momentum=0.9, nesterov=True, weight_decay=0, device=CPU)
    return TrainStep(LossModule(model, 0.5), opt, opts, CPU)


@pytest.mark.parametrize(
    "compiled, graph, name",
    [
        (False, False, "eager"),
        (False, True, "cuda-graph"),
        (True, False, "compiled"),
        (True, True, "compiled+cuda-graph"),
    ],
)
def test_step_mode_names(compiled, graph, name):
    assert step_mode(compiled, graph) == name


def test_report_of_an_eager_step_that_asked_for_a_graph():
    step = tiny_step(StepOptions())  # cuda_graph=True by default: not possible on a CPU
    for _ in range(3):
        step(*tiny_batch())
    r = step.report()
    assert (r.requested, r.mode, r.steps, r.eager_steps, r.graph_replays) == ("cuda-graph", "eager", 3, 3, 0)
    assert r.fell_back and "need a GPU" in r.fallback and r.compile is None and r.compile_s is None
    plain = tiny_step(StepOptions(cuda_graph=False)).report()
    assert (plain.requested, plain.fallback, plain.fell_back) == ("eager", None, False)


@pytest.mark.parametrize(
    "fallback, warned",
    [
        (None, False),  # a GPU run shorter than the warm-up: eager so far, its graph never due
        ("CUDA graph capture failed (out of memory)", True),
    ],
)
def test_the_run_warns_only_when_the_step_fell_back(caplog, fallback, warned):
    from tpn.trainer import log_step_report

    report = StepReport(requested="cuda-graph", mode="eager", steps=2, eager_steps=2, fallback=fallback)
    assert report.fell_back == warned
    with caplog.at_level(logging.INFO, logger="tpn.train"):
        log_step_report(report, on_gpu=True)
    assert "training step: eager (requested cuda-graph), 2 steps: 0 graph replays, 2 eager" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == ([f"the training step ran as eager, not cuda-graph: {fallback}"] if warned else [])


class FailingCapture:
    """Stands in for torch.cuda.graph: capture raises as a real failed capture does."""

    def __init__(self, graph, **kw):
        pass

    def __enter__(self):
        raise RuntimeError("operation not permitted when stream is capturing")

    def __exit__(self, *exc):
        return False


def test_a_failed_capture_falls_back_to_eager_and_says_why(monkeypatch):
    # The GPU-only parts are replaced so the real fallback branch runs on a CPU: the step must train
    # eagerly from then on and report eager, never a graph.
    step = tiny_step(StepOptions(warmup_iters=2))
    step.capture_wanted = True  # as on a GPU
    monkeypatch.setattr(step, "_side_stream_step", step._step)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: object())
    monkeypatch.setattr(torch.cuda, "graph", FailingCapture)
    losses = [step(*tiny_batch(seed=i)).item() for i in range(5)]
    r = step.report()
    assert (r.requested, r.mode, r.graph_replays, r.eager_steps, r.steps) == ("cuda-graph", "eager", 0, 5, 5)
    assert r.fallback.startswith("CUDA graph capture failed (operation not permitted") and r.fell_back
    assert step.graph is None and not step.capture_wanted and all(v == v for v in losses)


def test_compile_presets_reach_torch_compile(monkeypatch):
    seen = {}

    def fake_compile(module, options=None):
        seen["options"] = options
        return module  # runs eagerly: only the plumbing is under test here

    monkeypatch.setattr(torch, "compile", fake_compile)
    step = tiny_step(StepOptions(compile="mm1x1", cuda_graph=False))
    assert seen["options"] == {"conv_1x1_as_mm": True}
    step(*tiny_batch())
    r = step.report()
    assert (r.requested, r.mode, r.compile, r.compile_options) == (
        "compiled",
        "compiled",
        "mm1x1",
        {"conv_1x1_as_mm": True},
    )
    assert r.compile_s is not None and r.compile_s > 0  # the first step is timed
    tiny_step(StepOptions(compile=True, cuda_graph=False))
    assert seen["options"] == (compile_options(DEFAULT_COMPILE) or None)


def test_compile_preset_options():
    assert compile_options("default") == {}
    # the mode is expanded into its options, so a preset can add to it
    assert {"max_autotune": True, "coordinate_descent_tuning": True}.items() <= compile_options("autotune").items()
    assert compile_options("autotune_mm1x1") == {**compile_options("autotune"), "conv_1x1_as_mm": True}
    assert DEFAULT_COMPILE in COMPILE_PRESETS
    assert StepOptions(compile=True).compile == DEFAULT_COMPILE and StepOptions(compile=False).compile is None
    with pytest.raises(ValueError, match="unknown compile preset 'fastest'"):
        StepOptions(compile="fastest")


@pytest.mark.gpu
def test_cuda_graph_steps_match_eager_steps(monkeypatch):
    """Same batches and lr changes: replayed graph and eager steps give the same weights.

    TF32 is off and the rate is small, because eager GPU runs are not bit-exact
    (atomic-add order in backward): measured on an H100, two eager runs drift
    apart by 1e-2 within four steps at lr 0.05; at 0.005 the sixth loss still
    varies by up to 5e-4 from run to run, eager or replayed alike. The tolerance
    sits above that spread and far below what a stale input, a baked-in rate or
    a skipped update would cause.
    """
    dev = torch.device("cuda")
    for flags, name, value in (
        (torch.backends.cudnn, "benchmark", False),
        (torch.backends.cudnn, "deterministic", True),
        (torch.backends.cudnn, "allow_tf32", False),
        (torch.backends.cuda.matmul, "allow_tf32", False),
    ):
        monkeypatch.setattr(flags, name, value)  # restored after the test
    torch.manual_seed(0)
    base = tpn.create_model("tpn_tiny_f8s4", dropout=0.0)
    base.neck.aux_head.dropout.p = 0.0
    runs = {}
    # the third run is a control: eager with the rate left at its first value (a baked-in rate)
    for name, graph, schedule in (("eager", False, True), ("graph", True, True), ("baked", False, False)):
        model = copy.deepcopy(base).to(dev)
        opt = build_optimizer(
            list(model.parameters()), lr=0.005, momentum=0.9, nesterov=True, weight_decay=1e-4, device=dev
        )
        step = TrainStep(
            LossModule(model, 0.5), opt, StepOptions(clip_grad=40.0, cuda_graph=graph, warmup_iters=2), dev
        )
        losses = []
        for i in range(6):
            if schedule:
                set_lr(opt, 0.005 / (i + 1))  # the schedule must reach the replayed graph
            x, y = tiny_batch(4, seed=i)
            losses.append(step(x.to(dev), y.to(dev)))
        runs[name] = (torch.stack(losses).cpu(), flat_params(model).cpu(), step.mode)
        if graph:  # 2 eager warm-up steps, then the capture (trained on by its first replay) and 3 replays
            r = step.report()
            assert (r.eager_steps, r.graph_replays, r.fallback) == (2, 4, None)
    assert runs["graph"][2] == "cuda-graph" and runs["eager"][2] == "eager"

    def close(a: str, b: str) -> bool:
        return torch.allclose(runs[a][0], runs[b][0], rtol=1e-3, atol=0) and torch.allclose(
            runs[a][1], runs[b][1], rtol=1e-3, atol=1e-3
        )

    assert close("graph", "eager")
    assert not close("baked", "eager")  # the tolerance does catch a rate that never changes


@pytest.mark.gpu
def test_compiled_and_captured_steps_follow_the_eager_steps(monkeypatch):
    """torch.compile + CUDA graph: the same losses as eager (fused kernels round differently)."""
    dev = torch.device("cuda")
    for flags, name, value in (
        (torch.backends.cudnn, "allow_tf32", False),
        (torch.backends.cuda.matmul, "allow_tf32", False),
    ):
        monkeypatch.setattr(flags, name, value)
    torch.manual_seed(0)
    base = tpn.create_model("tpn_tiny_f8s4", dropout=0.0)
    base.neck.aux_head.dropout.p = 0.0
    losses = {}
    for compiled in (False, True):
        model = copy.deepcopy(base).to(dev)
        opt = build_optimizer(
            list(model.parameters()), lr=0.005, momentum=0.9, nesterov=True, weight_decay=1e-4, device=dev
        )
        step = TrainStep(
            LossModule(model, 0.5), opt, StepOptions(clip_grad=40.0, compile=compiled, warmup_iters=2), dev
        )
        losses[compiled] = torch.stack([step(*(t.to(dev) for t in tiny_batch(4, seed=i))) for i in range(5)]).cpu()
        r = step.report()
        assert (r.mode, r.graph_replays, r.eager_steps) == ("compiled+cuda-graph" if compiled else "cuda-graph", 3, 2)
        assert (r.compile_s is not None) == compiled
    assert torch.allclose(losses[True], losses[False], rtol=1e-3)
