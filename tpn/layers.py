"""Small building blocks shared by the backbones, the neck and the heads.

Layout: on a GPU the 3D models run with `channels_last_3d` (NDHWC) activations.
The blocks here keep that layout through forward *and* backward, so no step
pays for NCDHW <-> NDHWC copies: `BatchNorm3d` reaches PyTorch's channels-last
BatchNorm kernels, `global_mean` and `upsample_nearest` give NDHWC gradients
and outputs. Each falls back to the plain op for NCDHW tensors (and for
export), so results, parameters and state-dict keys are those of the plain ops.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

Triple = tuple[int, int, int]
BatchNormImpl = Literal["auto", "native", "reference"]


def is_ndhwc(x: Tensor) -> bool:
    """A 5-D tensor laid out channels_last_3d (and not also plain-contiguous, as when C == 1)."""
    return x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


# ------------------------------------------------------------------ BatchNorm on NDHWC


class BatchNormOps(NamedTuple):
    """The five batch-norm primitives that nn.SyncBatchNorm is built from (same signatures)."""

    stats: Callable  # (x, eps) -> mean, invstd per channel (float32 for half inputs)
    gather_stats_with_counts: Callable  # per-process stats -> global mean, invstd; updates running stats in place
    elemt: Callable  # (x, weight, bias, mean, invstd, eps) -> normalised x
    backward_reduce: Callable  # (dy, x, mean, invstd, weight, gx, gw, gb) -> sum_dy, sum_dy_xmu, grad_w, grad_b
    backward_elemt: Callable  # (dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count) -> grad_x


def _channel_view(v: Tensor, like: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (like.dim() - 2)))  # (C,) -> (1, C, 1, ...) broadcasting over x


def _reduce_dims(x: Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _ref_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    var, mean = torch.var_mean(x.float(), dim=_reduce_dims(x), correction=0)
    return mean, torch.rsqrt(var + eps)


def _ref_gather_stats_with_counts(
    x: Tensor,
    mean_all: Tensor,
    invstd_all: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    momentum: float,
    eps: float,
    counts: Tensor,
) -> tuple[Tensor, Tensor]:
    n_i = counts.to(mean_all.dtype)[:, None]  # (P, 1) values per channel on each process
    n = n_i.sum()
    mean = (mean_all * n_i).sum(0) / n
    var = ((invstd_all.pow(-2) - eps + (mean_all - mean).pow(2)) * n_i).sum(0) / n  # pooled biased variance
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
    if running_var is not None:
        running_var.mul_(1 - momentum).add_((var * n / (n - 1)).to(running_var.dtype), alpha=momentum)
    return mean, torch.rsqrt(var + eps)


def _ref_elemt(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, mean: Tensor, invstd: Tensor, eps: float
) -> Tensor:
    y = (x.float() - _channel_view(mean, x)) * _channel_view(invstd, x)
    if weight is not None:
        y = y * _channel_view(weight.float(), x)
    if bias is not None:
        y = y + _channel_view(bias.float(), x)
    return y.to(x.dtype)


def _ref_backward_reduce(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    input_g: bool,
    weight_g: bool,
    bias_g: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    g, dims = dy.float(), _reduce_dims(x)
    sum_dy = g.sum(dims)
    sum_dy_xmu = (g * (x.float() - _channel_view(mean, x))).sum(dims)
    dtype = weight.dtype if weight is not None else mean.dtype
    grad_w = (sum_dy_xmu * invstd).to(dtype) if weight_g else None
    grad_b = sum_dy.to(dtype) if bias_g else None
    return sum_dy, sum_dy_xmu, grad_w, grad_b


def _ref_backward_elemt(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    invstd: Tensor,
    weight: Tensor | None,
    sum_dy: Tensor,
    sum_dy_xmu: Tensor,
    count: Tensor,
) -> Tensor:
    n = count.sum().to(mean.dtype)
    scale = invstd if weight is None else invstd * weight.float()
    xmu = x.float() - _channel_view(mean, x)
    g = dy.float() - _channel_view(sum_dy / n, x) - xmu * _channel_view(invstd.pow(2) * sum_dy_xmu / n, x)
    return (g * _channel_view(scale, x)).to(x.dtype)


# PyTorch registers these five for CUDA only; the reference versions compute the same
# quantities with plain tensor ops (float32 accumulation, as the CUDA kernels), so the
# autograd Function below runs, and is tested, on a CPU too.
TORCH_BN_OPS = BatchNormOps(
    torch.batch_norm_stats,
    torch.batch_norm_gather_stats_with_counts,
    torch.batch_norm_elemt,
    torch.batch_norm_backward_reduce,
    torch.batch_norm_backward_elemt,
)
REFERENCE_BN_OPS = BatchNormOps(
    _ref_stats, _ref_gather_stats_with_counts, _ref_elemt, _ref_backward_reduce, _ref_backward_elemt
)


class _BatchNormFromPrimitives(torch.autograd.Function):
    """Training-mode batch norm of a channels-last tensor from the SyncBatchNorm primitives (one process)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps, momentum, ops):  # noqa: ANN001
        mean, invstd = ops.stats(x, eps)  # (C,), (C,)
        count = torch.full((1,), x.numel() // x.size(1), dtype=mean.dtype, device=x.device)
        if running_mean is not None:  # only updates the running statistics (in place)
            ops.gather_stats_with_counts(x, mean[None], invstd[None], running_mean, running_var, momentum, eps, count)
        ctx.save_for_backward(x, weight, mean, invstd, count.to(torch.int32))
        ctx.ops = ops
        return ops.elemt(x, weight, bias, mean, invstd, eps)

    @staticmethod
    def backward(ctx, dy):  # noqa: ANN001
        x, weight, mean, invstd, count = ctx.saved_tensors
        dy = dy.contiguous(memory_format=torch.channels_last)  # a no-op for the NHWC gradients expected
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        sum_dy, sum_dy_xmu, grad_w, grad_b = ctx.ops.backward_reduce(
            dy, x, mean, invstd, weight, need_x, need_w and weight is not None, need_b and weight is not None
        )
        grad_x = None
        if need_x:
            w = weight if weight is None or weight.dtype == mean.dtype else weight.to(mean.dtype)
            grad_x = ctx.ops.backward_elemt(dy, x, mean, invstd, w, sum_dy, sum_dy_xmu, count)
        return grad_x, grad_w if need_w else None, grad_b if need_b else None, None, None, None, None, None


class BatchNorm3d(nn.BatchNorm3d):
    """nn.BatchNorm3d (same parameters, buffers, state-dict keys and results) that keeps NDHWC fast on a GPU.

    Why: PyTorch's CUDA batch norm picks its channels-last kernels for 4-D
    channels_last tensors only (`batch_norm_choose_impl` in
    aten/src/ATen/native/cuda/Normalization.cu); a 5-D channels_last_3d tensor
    goes to the generic path, a Welford reduction plus strided elementwise
    kernels: the largest kernel in the profile of the bf16 step
    (benchmarks/results/2026-11-25-h100-gpu_diag.txt). An NDHWC tensor
    (N, C, T, H, W) is, without a copy, the 4-D channels_last tensor
    (N, C, T*H, W); on it the batch-norm primitives that SyncBatchNorm uses
    (`torch.batch_norm_stats`, `batch_norm_elemt`, `batch_norm_backward_reduce`,
    `batch_norm_backward_elemt`, with `batch_norm_gather_stats_with_counts`
    updating the running statistics) all take their channels-last kernels. In
    eval mode the same view goes through `F.batch_norm`.

    `impl`: "auto" takes that path for NDHWC CUDA tensors in eager code (not
    inside torch.compile, whose own BatchNorm lowering fuses better, nor in
    tracing or export) and is nn.BatchNorm3d otherwise; "native" is always
    nn.BatchNorm3d (for comparisons); "reference" takes the path on any device
    with the primitives written in plain PyTorch (`REFERENCE_BN_OPS`), which is
    how it is tested on a CPU.
    """

    impl: BatchNormImpl = "auto"

    def forward(self, x: Tensor) -> Tensor:
        if not self._ndhwc_path(x):
            return super().forward(x)
        x4 = x.flatten(2, 3)  # (N, C, T*H, W), channels_last: the same memory
        if self.training or self.running_mean is None:  # batch statistics, as nn.BatchNorm3d
            factor = self._momentum_factor()
            ops = TORCH_BN_OPS if self.impl == "auto" else REFERENCE_BN_OPS
            running = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
            y4 = _BatchNormFromPrimitives.apply(x4, self.weight, self.bias, *running, self.eps, factor, ops)
        else:
            y4 = F.batch_norm(x4, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)
        return y4.unflatten(2, x.shape[2:4])  # (N, C, T, H, W), NDHWC

    def _ndhwc_path(self, x: Tensor) -> bool:
        if self.impl == "native" or not is_ndhwc(x):
            return False
        if self.impl == "reference":
            return True
        return x.is_cuda and not (
            torch.compiler.is_compiling()
            or torch.jit.is_scripting()
            or torch.jit.is_tracing()
            or torch.onnx.is_in_onnx_export()
        )

    def _momentum_factor(self) -> float:
        """nn.BatchNorm's running-average factor; counts the batch in num_batches_tracked."""
        if not (self.training and self.track_running_stats):
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative average over all batches so far
            return 1.0 / float(self.num_batches_tracked)
        return self.momentum


def set_batchnorm_impl(model: nn.Module, impl: BatchNormImpl) -> nn.Module:
    """Set `impl` on every `BatchNorm3d` of `model` (see `BatchNorm3d`)."""
    if impl not in ("auto", "native", "reference"):
        raise ValueError(f"BatchNorm impl must be 'auto', 'native' or 'reference', got {impl!r}")
    for m in model.modules():
        if isinstance(m, BatchNorm3d):
            m.impl = impl
    return model


def train_mode(model: nn.Module, bn_eval: bool = False) -> nn.Module:
    """`model.train()`; with `bn_eval`, every BatchNorm stays in eval mode (frozen running statistics, affine
    still trained: the recipe's fine-tuning from ImageNet weights, `tpn.train --bn-eval`)."""
    model.train()
    if bn_eval:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model


class ConvBNReLU3d(nn.Sequential):
    """Conv3d (no bias) -> BatchNorm3d -> optional ReLU, named `conv` / `bn`."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int | Triple,
        stride: int | Triple = 1,
        padding: int | Triple = 0,
        groups: int = 1,
        relu: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)
        self.bn = BatchNorm3d(out_ch)
        if relu:
            self.relu = nn.ReLU(inplace=True)


class ResidualBlock(nn.Module):
    """relu(residual(x)): subclasses define `_residual` (branch + shortcut) and set `with_cp`.

    With `with_cp` the residual is recomputed in the backward pass instead of
    kept (gradient checkpointing, as the 16- and 32-frame configs use).
    """

    with_cp: bool = False

    def _residual(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and self.training:
            out = cp.checkpoint(self._residual, x, use_reentrant=False)
        else:
            out = self._residual(x)
        return self.relu(out)


def temporal_shift(x: Tensor, segments: int, fold_div: int = 8) -> Tensor:
    """TSM shift of (N*T, C, H, W): 1/fold_div channels from t+1, 1/fold_div from t-1.

    Channels [0, fold) take x[t+1], channels [fold, 2*fold) take x[t-1], the
    rest stay; the ends are zero padded. Written with slices, pads and a
    concat (no in-place writes) so that it exports to plain Slice/Pad/Concat.
    """
    v = x.unflatten(0, (-1, segments))  # (N, T, C, H, W)
    fold = v.shape[2] // fold_div
    # F.pad pads from the last dim backwards: (W, W, H, H, C, C, T, T)
    from_next = F.pad(v[:, 1:, :fold], (0, 0, 0, 0, 0, 0, 0, 1))
    from_prev = F.pad(v[:, :-1, fold : 2 * fold], (0, 0, 0, 0, 0, 0, 1, 0))
    out = torch.cat([from_next, from_prev, v[:, :, 2 * fold :]], dim=2)
    return out.flatten(0, 1)


def global_mean(x: Tensor) -> Tensor:
    """Mean over every space-time position: (N, C, T, H, W) -> (N, C).

    For NDHWC input the mean is taken over the (N, T, H, W, C) view, whose
    backward writes an NDHWC gradient; the plain mean's backward writes an
    NCDHW one, which turned the next elementwise backward into a mixed-layout one.
    """
    if is_ndhwc(x):
        return x.permute(0, 2, 3, 4, 1).mean(dim=(1, 2, 3))
    return x.mean(dim=(2, 3, 4))


def upsample_nearest(x: Tensor, scale: Triple) -> Tensor:
    """Nearest upsampling of (N, C, T, H, W) by whole factors; NDHWC stays NDHWC.

    PyTorch's CUDA nearest-3D kernel handles contiguous tensors only and
    returns NCDHW; for NDHWC input each value is repeated with expand +
    reshape on the (N, T, H, W, C) view instead (the same values: nearest
    with an integer factor s maps output index i to input index i // s).
    """
    if any(s != int(s) or s < 1 for s in scale):
        raise ValueError(f"nearest upsampling needs whole factors >= 1, got {scale}")
    st, sh, sw = (int(s) for s in scale)
    if not is_ndhwc(x):
        return F.interpolate(x, scale_factor=(float(st), float(sh), float(sw)), mode="nearest")
    n, c, t, h, w = x.shape
    v = x.permute(0, 2, 3, 4, 1)[:, :, None, :, None, :, None, :]  # (N, T, 1, H, 1, W, 1, C)
    v = v.expand(n, t, st, h, sh, w, sw, c).reshape(n, t * st, h * sh, w * sw, c)
    return v.permute(0, 4, 1, 2, 3)  # (N, C, T*st, H*sh, W*sw), NDHWC


def init_backbone_(module: nn.Module) -> None:
    """He init for convs (fan_out, as the reference code), unit BN."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_neck_(module: nn.Module) -> None:
    """Xavier-uniform convs, unit BN, N(0, 0.01) linear layers (reference neck init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.xavier_uniform_(m.weight)
        elif isinstance(m, nn.BatchNorm3d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)
