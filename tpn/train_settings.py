"""What defines a training run (`TrainSettings`) and how a resumed run gets its settings back.

A new run takes the zoo config's recipe with the given settings on top
(`resolve_settings`). A resumed run (`--resume RUN_DIR`) takes the settings
saved in its checkpoint with the given ones on top (`resumed_settings`), by
these rules:

| setting              | on resume                                                      |
|----------------------|----------------------------------------------------------------|
| batch_size, seed     | must stay as saved: they fix the data order an exact resume needs |
| max_steps            | not carried over: it was where the earlier invocation stopped  |
| out                  | the checkpoint's folder unless given                           |
| model (the NAME)     | must match the saved one when given                            |
| anything else        | the given value wins, and the change is logged                 |
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tpn
from pipeline import ClipSpec
from tpn import rundir
from tpn.engine import COMPILE_PRESETS, compile_preset
from tpn.schedule import scaled_lr

log = logging.getLogger("tpn.train")

RECIPE_FIELDS = (
    "epochs",
    "batch_size",
    "momentum",
    "nesterov",
    "weight_decay",
    "clip_grad",
    "lr_steps",
    "lr_gamma",
    "warmup_epochs",
    "aux_weight",
)
FIXED_ON_RESUME = ("batch_size", "seed")  # they decide the data order
NOT_RESUMED = ("max_steps",)  # a stop point of the earlier invocation, not of the run
BN_IMPLS = ("auto", "native")  # tpn.layers.BatchNorm3d impls a run may pick ("reference" is for tests)


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Everything that defines a run; saved as settings.json and in every checkpoint."""

    model: str
    train: tuple[str, ...]
    out: str
    val: tuple[str, ...] = ()
    train_split: str = "train"
    val_split: str = "val"
    # recipe (defaults: the zoo config's TrainRecipe, see `resolve_settings`)
    epochs: int
    batch_size: int  # per process
    lr: float | None = None  # None: recipe lr * global batch / recipe lr_batch
    momentum: float
    nesterov: bool
    weight_decay: float
    clip_grad: float  # 0 turns clipping off
    lr_steps: tuple[int, ...]
    lr_gamma: float
    warmup_epochs: float
    aux_weight: float
    dropout: float | None = None  # None: the config's (0.5)
    bn_eval: bool = False  # BN layers use and keep their running statistics (the seed's `bn_eval`)
    # initialisation
    num_classes: int | None = None  # None: the shards' class count
    pretrained: str | None = None  # torchvision-style 2D ImageNet ResNet
    checkpoint: str | None = None  # initial weights (any supported format)
    allow_other_architecture: bool = False  # load `checkpoint` even if it records another architecture
    # checkpoints and logging
    save_every: int = 0  # steps; 0 = only at epoch ends
    keep_last: int = 3
    log_every: int = 20
    val_every: int = 1
    val_views: str = "single"  # "single" (1 clip, centre crop) or "protocol" (the test protocol)
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in total
    # execution
    seed: int = 0
    device: str = "auto"
    loader_device: str = "auto"
    decoder: str = "auto"  # loader decoder: auto, nvdec, cpu, pyav or nvjpeg
    threads: int | None = None
    workers: int | None = None
    amp: bool | None = None  # None: bf16 on GPU, fp32 on CPU
    cuda_graph: bool = True
    channels_last: bool | None = None  # None: on for 3D models on GPU
    bn_impl: str = "auto"  # tpn.layers.BatchNorm3d: "auto" (channels-last kernels for NDHWC on a GPU) or "native"
    compile: str | None = None  # a tpn.engine.COMPILE_PRESETS name: torch.compile the forward + loss
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("train", "val", "lr_steps"):  # JSON and checkpoints give lists back
            object.__setattr__(self, name, tuple(getattr(self, name)))
        try:
            object.__setattr__(self, "compile", compile_preset(self.compile))
            compile_problem = None
        except ValueError:
            compile_problem = f"--compile must be one of {', '.join(COMPILE_PRESETS)}"
        problems = [
            msg
            for ok, msg in (
                (self.epochs >= 1, "--epochs must be >= 1"),
                (self.batch_size >= 1, "--batch-size must be >= 1"),
                (self.lr is None or self.lr > 0, "--lr must be > 0"),
                (self.clip_grad >= 0, "--clip-grad must be >= 0 (0 = off)"),
                (self.log_every >= 1, "--log-every must be >= 1"),
                (self.save_every >= 0, "--save-every must be >= 0"),
                (self.keep_last >= 0, "--keep-last must be >= 0 (0 = keep all)"),
                (self.val_every >= 1, "--val-every must be >= 1"),
                (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
                (self.val_views in ("single", "protocol"), "--val-views must be 'single' or 'protocol'"),
                (bool(self.train), "--train needs at least one shard directory or .tar"),
                (compile_problem is None, compile_problem),
                (self.bn_impl in BN_IMPLS, f"--bn-impl must be one of {', '.join(BN_IMPLS)}"),
            )
            if not ok
        ]
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training setting(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def resolve_settings(model: str, overrides: dict[str, Any]) -> TrainSettings:
    """The zoo config's recipe, with the explicitly given settings on top."""
    recipe = tpn.get_config(model).recipe
    base = {k: getattr(recipe, k) for k in RECIPE_FIELDS}
    return TrainSettings.from_dict({**base, "model": model, **overrides})


def effective_lr(s: TrainSettings, world_size: int) -> float:
    """--lr as given, else the recipe's lr scaled linearly to the global batch."""
    if s.lr is not None:
        return s.lr
    recipe = tpn.get_config(s.model).recipe
    return scaled_lr(recipe.lr, recipe.lr_batch, s.batch_size * world_size)


def val_clip_spec(clip: ClipSpec, views: str) -> ClipSpec:
    """Validation views: one centre-cropped clip (fast, as mmaction2's val pipeline) or the test protocol."""
    if views == "protocol":
        return clip
    return clip.replace(test_clips=1, test_crops="center", twice_sample=False, test_flip=False)


# ---------------------------------------------------------------------- resume


def read_resume_checkpoint(target: str | Path) -> tuple[Path, dict]:
    """`--resume` RUN_DIR (its newest checkpoint) or step_*.pth -> (its path, the loaded checkpoint)."""
    from tpn.checkpoint import read_checkpoint

    path = rundir.resume_checkpoint(target)
    ckpt = read_checkpoint(path)
    if "settings" not in ckpt or "progress" not in ckpt:
        raise ValueError(
            f"{path} is not a training checkpoint of tpn.train (no settings/progress): "
            "use --checkpoint to start from its weights"
        )
    return path, ckpt


def resumed_settings(saved: dict[str, Any], given: dict[str, Any], name: str | None, path: Path) -> TrainSettings:
    """The settings of a run resumed from the checkpoint at `path`: saved ones, given ones on top (see the table
    above)."""
    saved = {k: v for k, v in saved.items() if k not in NOT_RESUMED}
    if name and name != saved["model"]:
        raise ValueError(f"{path} trains {saved['model']!r}, not {name!r}")
    for fixed in FIXED_ON_RESUME:
        if fixed in given and given[fixed] != saved[fixed]:
            raise ValueError(
                f"--{fixed.replace('_', '-')} {given[fixed]} differs from the resumed run's {saved[fixed]}; "
                "an exact resume needs the same data order"
            )
    if "out" not in given:  # the run continues where its checkpoint lies
        saved["out"] = str(path.parent)
    changed = {k: v for k, v in given.items() if saved.get(k) != v}
    if changed:
        log.info("resuming with changed settings: %s", changed)
    return TrainSettings.from_dict({**saved, **given})
