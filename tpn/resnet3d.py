"""SlowOnly 3D ResNet-50/101, as used by the Kinetics rows of the TPN zoo, and the ResNet skeleton it shares
with the TSM backbone (`tpn.tsm`).

A torchvision ResNet with every conv turned 3D: a 1x7x7 stem, a 1x3x3 max
pool, and in res4/res5 the first 1x1 conv of every bottleneck inflated to
3x1x1. Nothing strides in time, so T is constant through the network.
Parameter names follow torchvision (`conv1`, `bn1`, `layer3.0.conv1`, ...),
which are also the reference TPN checkpoint names.

Both backbones are built by the same three functions, as torchvision builds
every video ResNet from one class: `add_stem` (conv1, bn1, relu, maxpool;
2D or 3D), `add_stages` (layer1..layer4: a block factory called per block,
the first block of a stage strided) and `stem_and_stages` (the forward
pass up to res4 and res5). A backbone differs only by its block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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


def add_stem(net: nn.Module, width: int, dims: int) -> None:
    """conv1 (7x7, stride 2), bn1, relu and maxpool (3x3, stride 2) on `net`; `dims` 3: no kernel or stride in
    time (1x7x7, 1x3x3)."""
    if dims == 3:
        net.conv1 = nn.Conv3d(3, width, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False)
        net.bn1 = BatchNorm3d(width)
    else:
        net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        net.bn1 = nn.BatchNorm2d(width)
    net.relu = nn.ReLU(inplace=True)
    net.maxpool = nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)) if dims == 3 else nn.MaxPool2d(3, 2, 1)


def add_stages(
    net: nn.Module,
    width: int,
    blocks: Sequence[int],
    block: Callable[[int, int, int, int], nn.Module],
) -> tuple[int, int, int, int]:
    """layer1..layer4 on `net`, stage i holding blocks[i] blocks of `block(stage, in_ch, planes, stride)`
    (planes = width * 2^i; the first block of a stage strides by SPATIAL_STRIDES[i]); their output channels."""
    in_ch = width
    for i, n in enumerate(blocks):
        planes = width * 2**i
        layer = []
        for b in range(n):
            layer.append(block(i, in_ch, planes, SPATIAL_STRIDES[i] if b == 0 else 1))
            in_ch = planes * EXPANSION
        net.add_module(f"layer{i + 1}", nn.Sequential(*layer))
    return stage_channels(width)


def stem_and_stages(net: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(res4, res5) of `x` through the stem and the four stages: 1/16 and 1/32 of the input's size."""
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))  # 1/4
    x = net.layer2(net.layer1(x))  # 1/8
    res4 = net.layer3(x)
    return res4, net.layer4(res4)


def projection(in_ch: int, out_ch: int, stride: int, dims: int) -> nn.Sequential | None:
    """The shortcut's 1x1 projection (`downsample`) where a block changes channels or strides, else None."""
    if stride == 1 and in_ch == out_ch:
        return None
    if dims == 3:
        return nn.Sequential(nn.Conv3d(in_ch, out_ch, 1, (1, stride, stride), bias=False), BatchNorm3d(out_ch))
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


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
        self.downsample = projection(in_ch, out_ch, stride, dims=3)
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
        add_stem(self, width, dims=3)
        self.channels = add_stages(
            self,
            width,
            stage_blocks(depth, blocks),
            lambda stage, in_ch, planes, stride: Bottleneck3d(in_ch, planes, stride, INFLATE[stage], with_cp),
        )
        init_backbone_(self)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return stem_and_stages(self, x)  # (N, 16w, T, H/16, W/16), (N, 32w, T, H/32, W/32)
