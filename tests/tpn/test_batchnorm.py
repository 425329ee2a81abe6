"""tpn.layers.BatchNorm3d: equal to nn.BatchNorm3d in every mode, on its NDHWC path and off it.

On a CPU the NDHWC path runs with the reference primitives (PyTorch has the
batch-norm primitives for CUDA only); the GPU tests run the real ones and
check which kernels they launch.
"""

import copy

import pytest
import torch
from torch import nn

import tpn
import tpn.layers as layers
from tpn.engine import LossModule, StepOptions, TrainStep, build_optimizer
from tpn.layers import REFERENCE_BN_OPS, TORCH_BN_OPS, BatchNorm3d, BatchNormOps, set_batchnorm_impl

CL3D = torch.channels_last_3d


def ndhwc(*shape: int, seed: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * 2 + 0.5  # a mean and a spread that differ from 0 and 1
    return x.to(device, dtype).contiguous(memory_format=CL3D)


def pair(impl: str, device: str = "cpu", **kw) -> tuple[nn.BatchNorm3d, BatchNorm3d]:
    """nn.BatchNorm3d with random affine, and a BatchNorm3d holding the same state."""
    torch.manual_seed(0)
    ref = nn.BatchNorm3d(6, **kw)
    if ref.affine:
        nn.init.normal_(ref.weight)
        nn.init.normal_(ref.bias)
    bn = BatchNorm3d(6, **kw)
    bn.load_state_dict(ref.state_dict())
    bn.impl = impl
    return ref.to(device), bn.to(device)


def grads(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
    x = x.detach().clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    y = module(x)
    y.backward(g)
    return y, x.grad, {n: p.grad for n, p in module.named_parameters()}


def assert_close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine, track", [(True, True), (False, True), (True, False)])
def test_reference_path_equals_nn_batchnorm(momentum, affine, track):
    ref, bn = pair("reference", momentum=momentum, affine=affine, track_running_stats=track)
    for step in range(3):  # training: batch statistics, running averages, num_batches_tracked
        x = ndhwc(3, 6, 4, 5, 7, seed=step)
        g = torch.randn_like(x).contiguous(memory_format=CL3D)
        (y0, gx0, gp0), (y1, gx1, gp1) = grads(ref, x, g), grads(bn, x, g)
        assert_close(y1, y0)
        assert_close(gx1, gx0)
        for name in gp0:
            assert_close(gp1[name], gp0[name], rtol=1e-5, atol=1e-4)  # sums over 420 values per channel
        assert y1.is_contiguous(memory_format=CL3D) and gx1.is_contiguous(memory_format=CL3D)
    bufs = dict(bn.named_buffers())
    for name, buf in ref.named_buffers():  # running mean and var; num_batches_tracked exactly
        assert_close(bufs[name], buf)
    ref.eval(), bn.eval()  # eval: running statistics (or batch statistics when none are tracked)
    x, g = ndhwc(2, 6, 3, 4, 4, seed=9), ndhwc(2, 6, 3, 4, 4, seed=10)
    (y0, gx0, gp0), (y1, gx1, gp1) = grads(ref, x, g), grads(bn, x, g)
    assert_close(y1, y0)
    assert_close(gx1, gx0)
    for name in gp0:
        assert_close(gp1[name], gp0[name], rtol=1e-5, atol=1e-4)


def counting_ops(calls: dict) -> BatchNormOps:
    def wrap(name, fn):
        def counted(*args):
            calls[name] = calls.get(name, 0) + 1
            return fn(*args)

        return counted

    return BatchNormOps(*(wrap(n, f) for n, f in zip(BatchNormOps._fields, REFERENCE_BN_OPS)))


@pytest.mark.parametrize(
    "impl, layout, training, path_taken",
    [
        ("reference", CL3D, True, True),  # every primitive: stats, running update, elemt, backward reduce + elemt
        ("reference", CL3D, False, False),  # eval: F.batch_norm on the 4-D view, no primitives
        ("reference", torch.contiguous_format, True, False),  # NCDHW: nn.BatchNorm3d
        ("auto", CL3D, True, False),  # auto on a CPU: nn.BatchNorm3d (the primitives are CUDA-only)
        ("native", CL3D, True, False),
    ],
)
def test_which_path_runs(monkeypatch, impl, layout, training, path_taken):
    calls: dict = {}
    monkeypatch.setattr(layers, "REFERENCE_BN_OPS", counting_ops(calls))
    _, bn = pair(impl)
    bn.train(training)
    x = ndhwc(2, 6, 3, 4, 4).contiguous(memory_format=layout).requires_grad_()
    bn(x).sum().backward()
    assert calls == (dict.fromkeys(BatchNormOps._fields, 1) if path_taken else {})


def test_state_dict_and_checkpoints_do_not_notice():
    ref, bn = pair("auto")
    assert list(bn.state_dict()) == list(ref.state_dict())
    assert BatchNorm3d(6).load_state_dict(ref.state_dict()) is not None  # strict by default
    model = tpn.create_model("tpn_tiny_f8s4")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm3d)]
    assert bns and all(type(m) is BatchNorm3d for m in bns)  # every 3D BN of the zoo models


def test_too_few_values_per_channel_take_the_native_path_and_its_error():
    # One value per channel (N*T*H*W == 1) is plain-contiguous too, so never NDHWC: nn.BatchNorm3d
    # runs and raises its own error; the NDHWC path never sees such a tensor.
    _, bn = pair("reference")
    x = ndhwc(1, 6, 1, 1, 1).contiguous(memory_format=CL3D)
    assert not layers.is_ndhwc(x)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x)


def test_an_unknown_impl_is_refused():
    with pytest.raises(ValueError, match="'auto', 'native' or 'reference'"):
        set_batchnorm_impl(nn.Sequential(BatchNorm3d(6)), "fast")


def test_training_steps_of_a_tiny_tpn_match_nn_batchnorm():
    # The whole step (forward, both losses, backward, clipping, SGD) twice, NDHWC on a CPU. A small
    # rate: with 2 clips some BN channels' variances are tiny after one step at lr 0.05, and through
    # them the stem's gradient amplifies float rounding (seen: 3% apart on the second step, either way).
    torch.manual_seed(0)
    base = tpn.create_model("tpn_tiny_f8s4", dropout=0.0).to(memory_format=CL3D)
    base.neck.aux_head.dropout.p = 0.0
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(2, 3, 8, 64, 64, generator=g), torch.randint(0, 8, (2,), generator=g)) for _ in range(2)]
    results = {}
    for impl in ("native", "reference"):
        model = set_batchnorm_impl(copy.deepcopy(base), impl)
        opt = build_optimizer(
            list(model.parameters()),
            lr=0.005,
            momentum=0.9,
            nesterov=True,
            weight_decay=1e-4,
            device=torch.device("cpu"),
        )
        step = TrainStep(
            LossModule(model, 0.5), opt, StepOptions(clip_grad=40.0, channels_last=True), torch.device("cpu")
        )
        losses = torch.stack([step(x, y) for x, y in batches])
        results[impl] = (losses, model.state_dict())
    assert_close(results["reference"][0], results["native"][0])
    for k, v in results["native"][1].items():
        assert_close(results["reference"][1][k].float(), v.float(), rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ GPU: the real primitives


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_primitives_equal_nn_batchnorm(dtype):
    """bf16 as under autocast: bf16 activations, fp32 affine and statistics."""
    ref, bn = pair("auto", device="cuda")
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for step in range(3):
        x = ndhwc(4, 6, 4, 7, 7, seed=step, device="cuda", dtype=dtype)
        g = ndhwc(4, 6, 4, 7, 7, seed=step + 10, device="cuda", dtype=dtype)
        (y0, gx0, gp0), (y1, gx1, gp1) = grads(ref, x, g), grads(bn, x, g)
        torch.testing.assert_close(y1, y0, **tol)
        torch.testing.assert_close(gx1, gx0, **tol)
        for name in gp0:
            torch.testing.assert_close(gp1[name], gp0[name], rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(bn.running_mean, ref.running_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, ref.running_var, rtol=1e-4, atol=1e-5)
    assert int(bn.num_batches_tracked) == int(ref.num_batches_tracked) == 3


@pytest.mark.gpu
def test_reference_primitives_follow_the_cuda_ones():
    x = ndhwc(4, 6, 4, 7, 7, device="cuda").flatten(2, 3)  # the 4-D channels_last view the module uses
    dy = ndhwc(4, 6, 4, 7, 7, seed=1, device="cuda").flatten(2, 3)
    w, b = torch.randn(6, device="cuda"), torch.randn(6, device="cuda")
    out = {}
    for name, ops in (("torch", TORCH_BN_OPS), ("reference", REFERENCE_BN_OPS)):
        rm, rv = torch.zeros(6, device="cuda"), torch.ones(6, device="cuda")
        mean, invstd = ops.stats(x, 1e-5)
        count = torch.full((1,), x.numel() // 6, dtype=mean.dtype, device="cuda")
        ops.gather_stats_with_counts(x, mean[None], invstd[None], rm, rv, 0.1, 1e-5, count)
        y = ops.elemt(x, w, b, mean, invstd, 1e-5)
        sdy, sdyx, gw, gb = ops.backward_reduce(dy, x, mean, invstd, w, True, True, True)
        gx = ops.backward_elemt(dy, x, mean, invstd, w, sdy, sdyx, count.int())
        out[name] = (mean, invstd, rm, rv, y, sdy, sdyx, gw, gb, gx)
    for a, b_ in zip(out["torch"], out["reference"]):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_cuda_path_launches_channels_last_kernels():
    """The point of the module: no generic Welford reduction or strided elementwise BN kernels."""
    from torch.profiler import ProfilerActivity, profile

    kernels = {}
    for impl in ("native", "auto"):
        _, bn = pair(impl, device="cuda")
        x = ndhwc(8, 6, 4, 14, 14, device="cuda", dtype=torch.bfloat16).requires_grad_()
        bn(x).float().sum().backward()  # warm
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            bn(x).float().sum().backward()
            torch.cuda.synchronize()
        kernels[impl] = [e.key for e in prof.key_averages() if e.self_device_time_total > 0]
    fast = " ".join(kernels["auto"]).lower()
    assert "channels_last" in fast and "welfordops" not in fast, kernels["auto"]
    assert (
        "welfordops" in " ".join(kernels["native"]).lower()
    )  # the control: nn.BatchNorm3d on NDHWC takes the generic path
