"""TSM ResNet-50: a 2D ResNet whose bottlenecks shift 1/8 of the channels each way in time.

Used by the Something-Something rows. Frames are folded into the batch
((N, 3, T, H, W) -> (N*T, 3, H, W)) and unfolded again at the outputs, so
the neck and heads see the same 5-D features as with the 3D backbone.

The shift sits at the input of every bottleneck's residual branch; the
identity path gets the unshifted input. The two reference codes differ
for the projection shortcut of each stage's first block: the original TPN
code feeds it the *shifted* input, mmaction2 the unshifted one.
`shift_shortcut` selects between them (True = original TPN).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from tpn.layers import ResidualBlock, init_backbone_, temporal_shift
from tpn.resnet3d import EXPANSION, add_stages, add_stem, projection, stage_blocks, stem_and_stages


class ShiftBottleneck(ResidualBlock):
    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        segments: int,
        shift_shortcut: bool,
        with_cp: bool,
    ) -> None:
        super().__init__()
        out_ch = planes * EXPANSION
        self.conv1 = nn.Conv2d(in_ch, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = projection(in_ch, out_ch, stride, dims=2)
        self.segments = segments
        self.shift_shortcut = shift_shortcut
        self.with_cp = with_cp

    def _residual(self, x: Tensor) -> Tensor:
        shifted = temporal_shift(x, self.segments)
        out = self.relu(self.bn1(self.conv1(shifted)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is None:
            shortcut = x
        else:
            shortcut = self.downsample(shifted if self.shift_shortcut else x)
        return out + shortcut


def unfold_time(x: Tensor, segments: int) -> Tensor:
    """(N*T, C, H, W) -> (N, C, T, H, W)."""
    return x.unflatten(0, (-1, segments)).transpose(1, 2)


class TSMResNet(nn.Module):
    """(N, 3, T, H, W) with T == segments -> (res4, res5) as 5-D features."""

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        blocks: Sequence[int] | None = None,
        segments: int = 8,
        shift_shortcut: bool = True,
        with_cp: bool = False,
    ) -> None:
        super().__init__()
        self.segments = segments
        self.shift_shortcut = shift_shortcut
        add_stem(self, width, dims=2)
        self.channels = add_stages(
            self,
            width,
            stage_blocks(depth, blocks),
            lambda stage, in_ch, planes, stride: ShiftBottleneck(
                in_ch, planes, stride, segments, shift_shortcut, with_cp
            ),
        )
        init_backbone_(self)

    def set_shift_shortcut(self, shifted: bool) -> None:
        """True: projection shortcuts see the shifted input (original TPN); False: mmaction2."""
        self.shift_shortcut = shifted
        for m in self.modules():
            if isinstance(m, ShiftBottleneck):
                m.shift_shortcut = shifted

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[2] != self.segments:
            raise ValueError(
                f"TSM backbone expects T={self.segments} frames (segments), got input of shape {tuple(x.shape)}"
            )
        res4, res5 = stem_and_stages(self, x.transpose(1, 2).flatten(0, 1))  # frames as (N*T, 3, H, W) images
        return unfold_time(res4, self.segments), unfold_time(res5, self.segments)
