"""SlowOnly 3D ResNet-50/101, as used by the Kinetics rows of the TPN zoo.

A torchvision ResNet with every conv turned 3D: a 1x7x7 stem, a 1x3x3 max
pool, and in res4/res5 the first 1x1 conv of every bottleneck inflated to
3x1x1. Nothing strides in time, so T is constant through the network.
Parameter names follow torchvision (`conv1`, `bn1`, `layer3.0.conv1`, ...),
which are also the reference TPN checkpoint names.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from tpn.layers import BatchNorm3d, ResidualBlock, init_backbone_

STAGE_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
SPATIAL_STRIDES = (1, 2, 2, 2)
INFLATE = (False, False, True, True)  # res2..res5: only res4 and res5 see time
EXPANSION = 4


def stage_blocks(depth: int, override: Sequence[int] | None = None) -> tuple[int, ...]:
    if override is not None:
        return tuple(override)
    if depth not in STAGE_BLOCKS:
        raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
    return STAGE_BLOCKS[depth]


def stage_channels(width: int) -> tuple[int, int, int, int]:
    """Output channels of res2..res5 for a stem of `width` channels."""
    return tuple(width * 2**i * EXPANSION for i in range(4))  # type: ignore[return-value]


class Bottleneck3d(ResidualBlock):
    def __init__(self, in_ch: int, planes: int, stride: int, inflate: bool, with_cp: bool) -> None:
        super().__init__()
        out_ch = planes * EXPANSION
        k1, p1 = ((3, 1, 1), (1, 0, 0)) if inflate else (1, 0)
        self.conv1 = nn.Conv3d(in_ch, planes, k1, padding=p1, bias=False)
        self.bn1 = BatchNorm3d(planes)
        self.conv2 = nn.Conv3d(planes, planes, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False)
        self.bn2 = BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, out_ch, 1, bias=False)
        self.bn3 = BatchNorm3d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, (1, stride, stride), bias=False), BatchNorm3d(out_ch)
            )
        self.with_cp = with_cp

    def _residual(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


class SlowOnly(nn.Module):
    """(N, 3, T, H, W) -> (res4, res5): (N, 16w, T, H/16, W/16), (N, 32w, T, H/32, W/32)."""

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        blocks: Sequence[int] | None = None,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(3, width, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False)
        self.bn1 = BatchNorm3d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1))
        in_ch = width
        for i, n in enumerate(stage_blocks(depth, blocks)):
            planes = width * 2**i
            layer = [Bottleneck3d(in_ch, planes, SPATIAL_STRIDES[i], INFLATE[i], with_cp)]
            in_ch = planes * EXPANSION
            layer += [Bottleneck3d(in_ch, planes, 1, INFLATE[i], with_cp) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
        self.channels = stage_channels(width)
        init_backbone_(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, w, T, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (N, 8w, T, H/8, W/8)
        res4 = self.layer3(x)  # (N, 16w, T, H/16, W/16)
        res5 = self.layer4(res4)  # (N, 32w, T, H/32, W/32)
        return res4, res5
