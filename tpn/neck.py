"""The Temporal Pyramid Network neck (Yang et al., CVPR 2020).

Two levels, res4 and res5:
  spatial semantic modulation -> temporal rate modulation -> top-down flow
  -> level fusion A, then bottom-up flow -> level fusion B, then pyramid
  fusion of A and B. An auxiliary classifier reads raw res4 in training.

`flow="cascade"` (default, as the released code and weights) runs the
bottom-up flow on the top-down-updated features; `"parallel"` runs it on
the temporal-modulation outputs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from tpn.layers import ConvBNReLU3d, Triple, global_mean, init_neck_, is_ndhwc, upsample_nearest

Flow = Literal["cascade", "parallel"]
ONE: Triple = (1, 1, 1)


@dataclass(frozen=True, kw_only=True)
class NeckConfig:
    """Per-config TPN settings (the reference configs' neck parameters)."""

    temporal_scales: tuple[int, int]  # max-pool rate of each level after temporal modulation
    downsample_scale: Triple = ONE  # bottom-up: pool after the 3x1x1 conv
    fusion_scales: tuple[Triple, Triple] = (ONE, ONE)  # level fusion: pool before each level
    upsample_scale: Triple = ONE  # top-down: nearest upsampling
    flow: Flow = "cascade"
    groups: int = 32
    aux_head: bool = True

    def __post_init__(self) -> None:
        if self.flow not in ("cascade", "parallel"):
            raise ValueError(f"TPN flow must be 'cascade' or 'parallel', got {self.flow!r}")

    def replace(self, **changes) -> NeckConfig:
        return dataclasses.replace(self, **changes)


def modulated_time(frames: int, scale: int) -> int:
    """Frames left after a ceil-mode max pool of `scale` (temporal rate modulation)."""
    return -(-frames // scale)


class LevelFusion(nn.Module):
    """Pool each level, 1x1x1 grouped conv + BN + ReLU, concat, 1x1x1 conv + BN + ReLU."""

    def __init__(self, mid: int, out: int, scales: tuple[Triple, Triple], groups: int) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool3d(s, s, 0, ceil_mode=True) for s in scales)
        self.levels = nn.ModuleList(ConvBNReLU3d(mid, mid, 1, groups=groups) for _ in scales)
        self.fuse = ConvBNReLU3d(mid * len(scales), out, 1)

    def forward(self, feats: list[Tensor]) -> Tensor:
        outs = [level(pool(f)) for f, pool, level in zip(feats, self.pools, self.levels)]
        return self.fuse(torch.cat(outs, dim=1))


class AuxHead(nn.Module):
    """Auxiliary classifier on raw res4: 1x3x3/2 conv + BN + ReLU, global pool, dropout, fc."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv = ConvBNReLU3d(in_ch, in_ch * 2, (1, 3, 3), (1, 2, 2), (0, 1, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_ch * 2, num_classes)

    def forward(self, res4: Tensor) -> Tensor:
        x = global_mean(self.conv(res4))  # (N, 2*C4)
        return self.fc(self.dropout(x))


class TPNNeck(nn.Module):
    """(res4, res5) -> (N, C5, T', H5, W5) with C5 = res5 channels.

    Channel plan (full size): res4 1024 and res5 2048 -> spatial modulation
    2048 each -> temporal modulation 1024 each -> fusions 2048 each ->
    pyramid fusion 2048.
    """

    def __init__(self, channels: tuple[int, int], num_classes: int, cfg: NeckConfig) -> None:
        super().__init__()
        c4, c5 = channels
        mid, out = c4, c5
        self.flow = cfg.flow
        self.upsample_scale = cfg.upsample_scale
        # res4 needs log2(c5 / c4) stride-2 convs to meet res5; res5 needs none.
        self.spatial_modulation = nn.ModuleList([nn.Sequential(*self._spatial_convs(c4, c5)), nn.Identity()])
        self.temporal_modulation = nn.ModuleList(nn.Sequential() for _ in cfg.temporal_scales)
        for tm, scale in zip(self.temporal_modulation, cfg.temporal_scales):
            tm.add_module("conv", nn.Conv3d(c5, mid, (3, 1, 1), 1, (1, 0, 0), groups=cfg.groups, bias=False))
            tm.add_module("pool", nn.MaxPool3d((scale, 1, 1), (scale, 1, 1), 0, ceil_mode=True))
        ds = nn.Sequential()
        ds.add_module("conv", nn.Conv3d(mid, mid, (3, 1, 1), 1, (1, 0, 0), bias=False))
        ds.add_module("pool", nn.MaxPool3d(cfg.downsample_scale, cfg.downsample_scale, 0, ceil_mode=True))
        self.downsample = nn.ModuleList([ds])
        self.top_down_fusion = LevelFusion(mid, out, cfg.fusion_scales, cfg.groups)
        self.bottom_up_fusion = LevelFusion(mid, out, cfg.fusion_scales, cfg.groups)
        self.pyramid_fusion = ConvBNReLU3d(2 * out, c5, 1)
        self.aux_head = AuxHead(c4, num_classes) if cfg.aux_head else None
        init_neck_(self)

    @staticmethod
    def _spatial_convs(c_in: int, c_out: int) -> list[nn.Module]:
        convs, c = [], c_in
        while c < c_out:
            convs.append(ConvBNReLU3d(c, 2 * c, (1, 3, 3), (1, 2, 2), (0, 1, 1)))
            c *= 2
        return convs

    def _upsample(self, x: Tensor, frames: int) -> Tensor:
        """Top-down: the upper level upsampled to meet a lower level of `frames` frames."""
        if tuple(self.upsample_scale) != (1, 1, 1):
            x = upsample_nearest(x, self.upsample_scale)
        if is_ndhwc(x) and x.shape[2] == 1 < frames:
            # The add would broadcast over time; its backward would then sum the gradient
            # into an NCDHW tensor. Repeating the frame first keeps both ways NDHWC.
            x = upsample_nearest(x, (frames, 1, 1))
        return x

    def forward(self, res4: Tensor, res5: Tensor) -> Tensor:
        feats = [sm(f) for sm, f in zip(self.spatial_modulation, (res4, res5))]  # (N, C5, T, h, w) each
        feats = [tm(f) for tm, f in zip(self.temporal_modulation, feats)]  # (N, C4, T/s_i, h, w)
        # Top-down. With R101's scales (4, 8) level 0 has T=2 and level 1 T=1:
        # the add broadcasts over time, as the reference code relies on.
        td = [feats[0] + self._upsample(feats[1], feats[0].shape[2]), feats[1]]
        top_down = self.top_down_fusion(td)  # (N, C5, T', h, w)
        bu = td if self.flow == "cascade" else feats
        bu = [bu[0], bu[1] + self.downsample[0](bu[0])]
        bottom_up = self.bottom_up_fusion(bu)  # (N, C5, T', h, w)
        return self.pyramid_fusion(torch.cat([top_down, bottom_up], dim=1))  # (N, C5, T', h, w)
