"""The recognizer: backbone -> optional TPN neck -> classification head.

One input contract for every zoo model: `model(x)` with x of shape
(N, 3, T, H, W), float, normalized -> logits (N, num_classes).

The head is fully convolutional: class scores are averaged over every
space-time position of the last feature map, so the same weights run on
224x224 training crops, 256x256 test crops or whole 256x340 frames. (The fc
layer is linear, so averaging its outputs over positions equals applying
it to the averaged features, which is what the head does.)
"""

from __future__ import annotations

from torch import Tensor, nn

from tpn.config import ModelConfig
from tpn.layers import global_mean
from tpn.neck import TPNNeck


class ClsHead(nn.Module):
    """Global space-time average -> dropout -> linear."""

    def __init__(self, in_ch: int, num_classes: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc_cls = nn.Linear(in_ch, num_classes)
        nn.init.normal_(self.fc_cls.weight, 0.0, 0.01)
        nn.init.zeros_(self.fc_cls.bias)

    def forward(self, feat: Tensor) -> Tensor:
        return self.fc_cls(self.dropout(global_mean(feat)))  # (N, C5, T, H, W) -> (N, classes)


class Recognizer(nn.Module):
    """Backbone + optional TPN neck + head. Built by `tpn.create_model`.

    `config` is the model's description: its class count and dropout size
    the head, and its name, backbone kind and clip spec are what checkpoints,
    the test protocol and export read. A model assembled from parts takes a
    zoo config, changed where it differs:
    `Recognizer(backbone, neck, dataclasses.replace(tpn.get_config(name), name="mine", num_classes=10))`.
    """

    def __init__(self, backbone: nn.Module, neck: TPNNeck | None, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.neck = neck
        self.cls_head = ClsHead(backbone.channels[-1], config.num_classes, config.dropout)
        self.num_classes = config.num_classes

    @property
    def has_aux(self) -> bool:
        return self.neck is not None and self.neck.aux_head is not None

    def forward_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(N, 3, T, H, W) -> (last feature map (N, C5, T', h, w), raw res4)."""
        res4, res5 = self.backbone(x)
        feat = res5 if self.neck is None else self.neck(res4, res5)
        return feat, res4

    def forward_head(self, feat: Tensor) -> Tensor:
        return self.cls_head(feat)

    def forward(self, x: Tensor) -> Tensor:
        feat, _ = self.forward_features(x)
        return self.forward_head(feat)

    def forward_train(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Logits and auxiliary logits (None for models without an auxiliary head)."""
        feat, res4 = self.forward_features(x)
        aux = self.neck.aux_head(res4) if self.has_aux else None
        return self.forward_head(feat), aux
