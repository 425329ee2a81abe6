"""The model an artifact is made from: its weights and where they came from, its input, and its reference logits.

`load_model` is the one way the export tools build a zoo model with its
weights; `ModelSource` records where those weights came from (a checkpoint,
by path and sha256, the zoo's published file, or nothing: random weights).
The checks feed seeded `synthetic_clips` of the exported input size and
compare with `torch_logits`, PyTorch FP32 on the CPU.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import tpn
from export.errors import ExportError
from pipeline import sha256_file


@dataclass
class ModelSource:
    """Which network and which weights an artifact was made from."""

    name: str
    num_classes: int
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    # "random" (no checkpoint), "checkpoint", "zoo" (its sha256 is the zoo entry's published one) or "module"
    # (a caller's model, weights of unknown origin)
    weights: str = "random"
    class_names: list[str] | None = None  # label order, when the checkpoint records it

    def random_weights_warning(self) -> str | None:
        """The line every export without a checkpoint starts with (None when there are real weights)."""
        return RANDOM_WEIGHTS.format(name=self.name) if self.weights == "random" else None


RANDOM_WEIGHTS = (
    "WARNING: random weights: no --checkpoint was given and the toolkit bundles no zoo weights, so {name} is "
    "exported with its random initial weights; the files run, but Top-1 gates and accuracy figures are "
    "meaningless for them (pass --checkpoint FILE)"
)


def load_model(
    name_or_model: str | nn.Module,
    checkpoint: str | os.PathLike | Mapping | None = None,
    *,
    other_architecture: bool = False,
) -> tuple[nn.Module, ModelSource]:
    """An eval-mode zoo model with its weights, and where they came from.

    The checkpoint file is read once (`tpn.read_checkpoint`, weights only):
    its class count sizes the model, its tensors fill it, its class names go
    to the `ModelSource`. Raises ExportError (with the zoo's close names, or
    the checkpoint loader's explanation) for unknown names and unusable
    checkpoints.
    """
    if isinstance(name_or_model, nn.Module):
        if not isinstance(getattr(name_or_model, "config", None), tpn.ModelConfig):
            raise ExportError("the model has no zoo config: build it with tpn.create_model(name)")
        name = name_or_model.config.name
    else:
        try:
            name = tpn.get_config(name_or_model).name
        except ValueError as e:
            raise ExportError(str(e)) from None
    weights = _read_checkpoint(checkpoint, name) if checkpoint is not None else None
    info = tpn.checkpoint_classes(weights) if weights is not None else tpn.ClassInfo(None, None)
    if isinstance(name_or_model, nn.Module):
        model = name_or_model
    else:
        model = tpn.create_model(name, num_classes=info.num_classes)  # a fine-tuned count differs from the zoo's
    if weights is not None:
        _load_weights(model, weights, checkpoint, other_architecture)
    source = _source(model, checkpoint)
    source.class_names = info.names
    if isinstance(name_or_model, nn.Module) and checkpoint is None:
        source.weights = "module"  # whatever the caller's module holds: not ours to judge
    return model.eval(), source


def _read_checkpoint(checkpoint: str | os.PathLike | Mapping, name: str) -> Mapping:
    if isinstance(checkpoint, Mapping):
        return checkpoint
    try:
        return tpn.read_checkpoint(checkpoint)
    except tpn.CheckpointError as e:
        raise ExportError(f"cannot use checkpoint for {name}: {e}") from None


def _load_weights(
    model: nn.Module, weights: Mapping, checkpoint: str | os.PathLike | Mapping, other_architecture: bool
) -> None:
    where = "the state dict" if isinstance(checkpoint, Mapping) else str(checkpoint)
    try:
        # its errors name the file, not "<state dict>"
        tpn.load_checkpoint(model, weights, source_name=where, other_architecture=other_architecture)
    except tpn.CheckpointError as e:
        raise ExportError(f"cannot load {where} into {model.config.name}: {e}") from None


def _source(model: nn.Module, checkpoint: str | os.PathLike | Mapping | None) -> ModelSource:
    cfg = model.config
    src = ModelSource(name=cfg.name, num_classes=int(model.num_classes))
    if checkpoint is not None and not isinstance(checkpoint, Mapping):
        src.checkpoint = str(checkpoint)
        src.checkpoint_sha256 = sha256_file(checkpoint)
        zoo = cfg.weights_sha256 is not None and src.checkpoint_sha256 == cfg.weights_sha256
        src.weights = "zoo" if zoo else "checkpoint"
    elif checkpoint is not None:  # a state dict in memory
        src.weights = "checkpoint"
    return src


# ----------------------------------------------------------------- its input: clip shapes and synthetic clips


def input_hw(cfg: tpn.ModelConfig, size: str | int | tuple[int, int]) -> tuple[int, int]:
    """Spatial size of the exported input: "train" (the training crop), "test" (the test crop) or explicit.

    "test" is what the test protocol feeds (and so what the Top-1 gate
    needs); "full" test views have no fixed width, so they need an
    explicit size.
    """
    clip = cfg.clip
    if size == "train":
        return clip.crop_size, clip.crop_size
    if size == "test":
        if clip.test_crops == "full":
            raise ExportError(
                f"{cfg.name} tests on full frames (test_crops='full'), whose width depends on the "
                f"video: pass an explicit size (H, W), e.g. ({clip.test_scale}, {clip.test_scale * 4 // 3})"
            )
        return clip.test_crop, clip.test_crop
    if isinstance(size, int) and size > 0:
        return size, size
    if isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0 for s in size):
        return int(size[0]), int(size[1])
    raise ExportError(f"size must be 'train', 'test', a positive int or (H, W), got {size!r}")


def clip_shape(cfg: tpn.ModelConfig, hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """(3, T, H, W) of one exported clip."""
    return (3, cfg.clip.frames, hw[0], hw[1])


def synthetic_clips(
    n: int,
    shape: tuple[int, int, int, int],
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    seed: int = 0,
) -> np.ndarray:
    """(n, 3, T, H, W) float32 normalised clips that look like video to a network.

    Smooth colour fields that drift over time plus a little pixel noise, in
    0-255 before normalisation: spatially correlated like real frames, so
    activations have realistic ranges (white noise would not).
    """
    c, t, h, w = shape
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0.0, 255.0, size=(n, c, max(2, t // 2), max(2, h // 16), max(2, w // 16)))
    x = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(t, h, w), mode="trilinear")
    x = x + torch.from_numpy(rng.normal(0.0, 6.0, size=x.shape))
    x = x.clamp(0.0, 255.0)
    m = torch.tensor(mean, dtype=x.dtype).view(1, c, 1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, c, 1, 1, 1)
    return ((x - m) / s).numpy().astype(np.float32)


def reference_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The PyTorch reference every artifact is compared with: FP32 logits of `x`, on the model's device,
    in inference mode."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model(x.to(device).float()).float()


def torch_logits(model: nn.Module, clips: np.ndarray, batch: int = 8) -> np.ndarray:
    """`reference_logits` of numpy clips, a few at a time, as numpy."""
    return np.concatenate(
        [
            reference_logits(model, torch.from_numpy(clips[i : i + batch])).cpu().numpy()
            for i in range(0, len(clips), batch)
        ]
    )
