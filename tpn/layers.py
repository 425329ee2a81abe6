"""Small building blocks shared by the backbones, the neck and the heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from torch import Tensor, nn

Triple = tuple[int, int, int]


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
        self.bn = nn.BatchNorm3d(out_ch)
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
    """Mean over every space-time position: (N, C, T, H, W) -> (N, C)."""
    return x.mean(dim=(2, 3, 4))


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
