"""What a zoo model is, as data: `ModelConfig` (architecture, classes, clip, test protocol, recipe, the
seed's Top-1) and `TrainRecipe`. The registry of named configs is `tpn.zoo`; the network built from
one is `tpn.model.Recognizer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipeline import ClipSpec
from tpn.neck import NeckConfig

Backbone = Literal["slowonly", "tsm"]


@dataclass(frozen=True, kw_only=True)
class TrainRecipe:
    """The seed configs' optimisation settings."""

    lr: float = 0.01  # for `lr_batch` clips; scaled linearly with the global batch
    lr_batch: int = 64
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    clip_grad: float = 40.0
    epochs: int = 150
    lr_steps: tuple[int, ...] = (75, 125)
    lr_gamma: float = 0.1
    warmup_epochs: int = 0
    batch_size: int = 8  # clips per GPU in the seed configs
    aux_weight: float = 0.5


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    name: str
    backbone: Backbone
    depth: int = 50
    width: int = 64  # stem channels; 64 for every zoo row
    blocks: tuple[int, ...] | None = None  # per-stage blocks; None = from depth
    neck: NeckConfig | None = None  # None = baseline (no TPN)
    num_classes: int
    dataset: str
    clip: ClipSpec
    recipe: TrainRecipe = field(default_factory=TrainRecipe)
    dropout: float = 0.5
    shift_shortcut: bool = True  # TSM: projection shortcut sees the shifted input (original TPN)
    with_cp: bool = False  # gradient checkpointing in the backbone (16/32-frame configs)
    top1: float | None = None  # the seed's published Top-1 (%)
    source: str = ""  # the reference config file
    weights_sha256: str | None = None
    tiny: bool = False

    @property
    def with_tpn(self) -> bool:
        return self.neck is not None

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """(3, T, H, W) of one training clip."""
        return (3, self.clip.frames, self.clip.crop_size, self.clip.crop_size)
