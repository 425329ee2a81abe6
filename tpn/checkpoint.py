"""Loading weights: this project's checkpoints, original TPN, mmaction2, and 2D ImageNet init.

Foreign formats are described by declarative key maps: ordered
(own module template, foreign module template) pairs, where `{L}`-style
placeholders match integers and `{path}` any dotted tail. The same map
converts in both directions; the first matching rule wins. Parameter leaf
names (weight, bias, running_mean, ...) carry over unchanged.

Every file is read with `torch.load(weights_only=True)`: nothing in a
checkpoint is ever executed.
"""

from __future__ import annotations

import dataclasses

import logging
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import Tensor, nn

from pipeline import atomic_write

log = logging.getLogger("tpn.checkpoint")

OWN_FORMAT = "tpn-toolkit"
KeyMap = tuple[tuple[str, str], ...]


# decisionforce/TPN (mmcv 0.x): torchvision-style backbone, `necks.` prefix.
ORIGINAL_TPN: KeyMap = (
    ("backbone.{path}", "backbone.{path}"),
    ("neck.spatial_modulation.{path}", "necks.spatial_modulation.spatial_modulation.{path}"),
    ("neck.temporal_modulation.{i}.conv", "necks.temporal_modulation_ops.{i}.conv"),
    ("neck.downsample.{i}.conv", "necks.downsampling_ops.{i}.conv"),
    # level_fusion_op2 fuses the top-down flow, level_fusion_op the bottom-up one
    *(
        rule
        for own, ref in (("top_down_fusion", "level_fusion_op2"), ("bottom_up_fusion", "level_fusion_op"))
        for rule in (
            (f"neck.{own}.levels.{{i}}.conv", f"necks.{ref}.ops.{{i}}.conv"),
            (f"neck.{own}.levels.{{i}}.bn", f"necks.{ref}.ops.{{i}}.norm"),
            (f"neck.{own}.fuse.conv", f"necks.{ref}.fusion_conv.0"),
            (f"neck.{own}.fuse.bn", f"necks.{ref}.fusion_conv.1"),
        )
    ),
    ("neck.pyramid_fusion.conv", "necks.pyramid_fusion_op.0"),
    ("neck.pyramid_fusion.bn", "necks.pyramid_fusion_op.1"),
    ("neck.aux_head.conv.{path}", "necks.aux_head.convs.{path}"),
    ("neck.aux_head.fc", "necks.aux_head.fc"),
    ("cls_head.fc_cls", "cls_head.fc_cls"),
)

# open-mmlab/mmaction2: ConvModule sub-layers `conv` / `bn`, `neck.` prefix.
_MMACTION2_COMMON: KeyMap = (
    ("backbone.conv1", "backbone.conv1.conv"),
    ("backbone.bn1", "backbone.conv1.bn"),
    ("backbone.layer{L}.{B}.conv{K}", "backbone.layer{L}.{B}.conv{K}.conv"),
    ("backbone.layer{L}.{B}.bn{K}", "backbone.layer{L}.{B}.conv{K}.bn"),
    ("backbone.layer{L}.{B}.downsample.0", "backbone.layer{L}.{B}.downsample.conv"),
    ("backbone.layer{L}.{B}.downsample.1", "backbone.layer{L}.{B}.downsample.bn"),
    ("neck.spatial_modulation.{path}", "neck.spatial_modulation.spatial_modulation.{path}"),
    ("neck.temporal_modulation.{i}.conv", "neck.temporal_modulation_ops.{i}.conv.conv"),
    ("neck.downsample.{i}.conv", "neck.downsample_ops.{i}.conv.conv"),
    # level_fusion_1 fuses the top-down flow, level_fusion_2 the bottom-up one
    *(
        rule
        for own, ref in (("top_down_fusion", "level_fusion_1"), ("bottom_up_fusion", "level_fusion_2"))
        for rule in (
            (f"neck.{own}.levels.{{i}}.conv", f"neck.{ref}.downsamples.{{i}}.conv.conv"),
            (f"neck.{own}.levels.{{i}}.bn", f"neck.{ref}.downsamples.{{i}}.conv.bn"),
            (f"neck.{own}.fuse.{{path}}", f"neck.{ref}.fusion_conv.{{path}}"),
        )
    ),
    ("neck.pyramid_fusion.{path}", "neck.pyramid_fusion.{path}"),
    ("neck.aux_head.{path}", "neck.aux_head.{path}"),
    ("cls_head.fc_cls", "cls_head.fc_cls"),
)
MMACTION2_3D: KeyMap = _MMACTION2_COMMON
# ResNetTSM wraps each block's conv1 conv in a TemporalShift (`.net`).
MMACTION2_TSM: KeyMap = (
    ("backbone.layer{L}.{B}.conv1", "backbone.layer{L}.{B}.conv1.conv.net"),
    *_MMACTION2_COMMON,
)

# torchvision 2D ResNet (ImageNet): no prefix, `fc` classifier (not used).
TORCHVISION_2D: KeyMap = (("backbone.{path}", "{path}"),)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the given model; the message says why."""


@dataclass
class LoadReport:
    source: str
    format: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)  # tolerated ones (aux head, BN counters)
    dropped: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used
    notes: list[str] = field(default_factory=list)


# ------------------------------------------------------------ key mapping


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    out = []
    for p in parts:
        if p == "{path}":
            out.append(r"(?P<path>.+)")
        elif p.startswith("{") and p.endswith("}"):
            out.append(rf"(?P<{p[1:-1]}>\d+)")
        else:
            out.append(re.escape(p))
    return re.compile("".join(out))


def map_key(key: str, keymap: KeyMap, reverse: bool = False) -> str | None:
    """Map one parameter key through `keymap` (own -> foreign, or back); None if no rule matches."""
    module, _, leaf = key.rpartition(".")
    for own, foreign in keymap:
        src, dst = (foreign, own) if reverse else (own, foreign)
        m = _template_regex(src).fullmatch(module)
        if m:
            return f"{dst.format(**m.groupdict())}.{leaf}"
    return None


def convert_state_dict(sd: Mapping[str, Tensor], keymap: KeyMap, reverse: bool = False) -> dict[str, Tensor]:
    """Rename every key; keys no rule matches raise (they are not silently dropped)."""
    out, unmatched = {}, []
    for k, v in sd.items():
        new = map_key(k, keymap, reverse)
        if new is None:
            unmatched.append(k)
        else:
            out[new] = v
    if unmatched:
        raise CheckpointError(f"{len(unmatched)} key(s) have no mapping, e.g. {unmatched[:5]}")
    return out


# ------------------------------------------------------------ reading files


def read_checkpoint(path: str | Path) -> dict:
    """torch.load with weights_only=True, and errors that say what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    _check_torch_file(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} needs arbitrary Python objects to load, so it was refused (weights are only "
            f"ever loaded with weights_only=True; nothing in the file was executed). If you trust "
            f"the file, re-save just its tensors elsewhere, e.g. "
            f"torch.save(torch.load(p, weights_only=False)['state_dict'], 'clean.pth'). Detail: {e}"
        ) from None
    except Exception as e:  # truncated or not a torch file
        raise CheckpointError(f"{path} is not a readable torch checkpoint: {type(e).__name__}: {e}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    return obj


# What a file that is not a checkpoint most likely is, by its first bytes (offset, magic).
_KNOWN_FILES = (
    ((4, b"ftyp"), "an MP4/MOV video"),
    ((0, b"\x1a\x45\xdf\xa3"), "a WebM/Matroska video"),
    ((0, b"RIFF"), "an AVI video or WAV file"),
    ((0, b"\xff\xd8\xff"), "a JPEG image"),
    ((0, b"\x89PNG"), "a PNG image"),
    ((257, b"ustar"), "a tar archive (a shard?)"),  # the USTAR magic sits after the first member's name
)


def _check_torch_file(path: Path) -> None:
    """A torch.save file is a zip archive (since PyTorch 1.6) or, older, a pickle: anything else is refused
    as not a checkpoint at all (before torch.load calls it one that needs arbitrary Python objects)."""
    with open(path, "rb") as f:
        head = f.read(512)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return
    kind = next((what for (at, magic), what in _KNOWN_FILES if head[at : at + len(magic)] == magic), None)
    looks = f"it looks like {kind}" if kind else f"it starts with {head[:8]!r}"
    raise CheckpointError(
        f"{path} is not a PyTorch checkpoint ({looks}; a torch.save file is a zip archive or a pickle): "
        "pass the .pth that tpn.train wrote, or an original TPN / mmaction2 checkpoint"
    )


@dataclass(frozen=True)
class ClassInfo:
    """What a checkpoint records about its classes; None where it records nothing."""

    num_classes: int | None  # this project's files record it (a fine-tuned model differs from its zoo config)
    names: list[str] | None  # label order, as `tpn.train` saves it from the shards' classes.json


def checkpoint_classes(source: str | os.PathLike | Mapping) -> ClassInfo:
    """The class count and names a checkpoint (a file, read by `read_checkpoint`, or its loaded dict) records.

    Only this project's format records a class count; names are taken
    from any checkpoint dict with a `classes` list of strings.
    """
    obj = source if isinstance(source, Mapping) else read_checkpoint(source)
    n = obj.get("num_classes") if obj.get("format") == OWN_FORMAT else None
    names = obj.get("classes")
    if not (isinstance(names, (list, tuple)) and all(isinstance(c, str) for c in names)):
        names = None
    return ClassInfo(int(n) if n is not None else None, list(names) if names is not None else None)


def extract_state_dict(obj: Mapping) -> tuple[dict[str, Tensor], Mapping]:
    """(state dict, outer dict) from the usual wrappers: ours ('model'), mmcv ('state_dict'), bare."""
    if obj.get("format") == OWN_FORMAT:
        sd = obj["model"]
    elif "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        sd = obj["state_dict"]
    elif "model" in obj and isinstance(obj["model"], Mapping):
        sd = obj["model"]
    else:
        sd = obj
    sd = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith("module.") for k in sd):  # saved from a DDP wrapper
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd, obj


def detect_format(sd: Mapping[str, Tensor]) -> str:
    """'own', 'original' (decisionforce/TPN), 'mmaction2' or 'torchvision2d'."""
    keys = list(sd)
    if any(k.startswith("necks.") for k in keys):
        return "original"
    if "backbone.conv1.conv.weight" in sd or any(k.startswith("neck.level_fusion_") for k in keys):
        return "mmaction2"
    if "conv1.weight" in sd and any(k.startswith("layer1.") for k in keys):
        return "torchvision2d"
    if "backbone.conv1.weight" in sd:
        # Baselines have the same names in ours and the original; both map identically.
        return "own"
    raise CheckpointError(
        "unrecognised checkpoint layout (expected keys such as 'backbone.conv1.weight', "
        f"'necks.*' or 'neck.*'); first keys: {keys[:5]}"
    )


def foreign_map(fmt: str, model: nn.Module) -> KeyMap | None:
    is_tsm = model.config.backbone == "tsm"
    return {
        "original": ORIGINAL_TPN,
        "mmaction2": MMACTION2_TSM if is_tsm else MMACTION2_3D,
        "own": None,
    }[fmt]


# ------------------------------------------------------------ loading

CLASSIFIER_PREFIXES = ("cls_head.fc_cls.", "neck.aux_head.fc.")


def _is_tolerated_missing(key: str) -> bool:
    # Test-time checkpoints drop the auxiliary head (used in training only);
    # very old files may lack BN's batch counters.
    return key.startswith("neck.aux_head.") or key.endswith("num_batches_tracked")


def _source_name(source) -> str:
    return str(source) if isinstance(source, (str, Path)) else "<state dict>"


def _check_shapes(sd: dict, target: dict, name: str, drop_classifier: bool, report: LoadReport) -> dict:
    bad = {
        k: (tuple(sd[k].shape), tuple(target[k].shape)) for k in sd if k in target and sd[k].shape != target[k].shape
    }
    if not bad:
        return sd
    if drop_classifier and all(k.startswith(CLASSIFIER_PREFIXES) for k in bad):
        for k in bad:
            sd.pop(k)
        report.dropped += sorted(bad)
        msg = f"{name}: classifier shapes differ ({len(bad)} tensors); left them freshly initialised"
        log.warning(msg)
        report.notes.append(msg)
        return sd
    lines = [f"  {k}: checkpoint {a} vs model {b}" for k, (a, b) in list(bad.items())[:10]]
    hint = ""
    if all(k.startswith(CLASSIFIER_PREFIXES) for k in bad):
        n = sd["cls_head.fc_cls.weight"].shape[0] if "cls_head.fc_cls.weight" in bad else "?"
        hint = (
            f"\nOnly the classifier differs: the checkpoint has {n} classes. Build the model with "
            f"num_classes={n}, or pass drop_classifier=True (CLI: --drop-classifier) to fine-tune."
        )
    else:
        hint = "\nThe checkpoint was made for a different architecture: check the model name."
    raise CheckpointError(f"{name}: {len(bad)} tensor shape(s) differ:\n" + "\n".join(lines) + hint)


def _assign(model: nn.Module, sd: dict, name: str, strict: bool, drop_classifier: bool, report: LoadReport) -> None:
    target = model.state_dict()
    unexpected = [k for k in sd if k not in target]
    aux_only = [k for k in unexpected if k.startswith("neck.aux_head.")]
    for k in aux_only:  # the model was built without its auxiliary head
        sd.pop(k)
    report.dropped += aux_only
    unexpected = [k for k in unexpected if k not in aux_only]
    sd = _check_shapes(sd, target, name, drop_classifier, report)
    missing = [k for k in target if k not in sd and not k.startswith(tuple(report.dropped))]
    hard_missing = [k for k in missing if not _is_tolerated_missing(k)]
    if strict and (hard_missing or unexpected):
        raise CheckpointError(
            f"{name} does not match {model.config.name}: "
            f"{len(hard_missing)} missing key(s) {hard_missing[:8]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}. "
            "Check that the tool's model name is the checkpoint's (in Python, strict=False loads what matches)."
        )
    report.missing = missing
    report.dropped += unexpected
    model.load_state_dict(sd, strict=False)
    report.loaded = len(sd) - len([k for k in unexpected if k in sd])
    if any(k.startswith("neck.aux_head.") for k in missing):
        report.notes.append("no auxiliary head in the checkpoint (a test-time file): it keeps its init")


def load_checkpoint(
    model: nn.Module,
    source: str | Path | Mapping,
    *,
    strict: bool = True,
    drop_classifier: bool = False,
    source_name: str | None = None,
    other_architecture: bool = False,
) -> LoadReport:
    """Load this project's, the original TPN's or mmaction2's weights into a zoo model.

    The format is detected from the key names. Loading an mmaction2 TSM
    checkpoint switches the backbone's projection shortcuts to mmaction2's
    unshifted input, so the weights give the outputs they were trained with.
    `source_name` names an already loaded dict in errors and notes (its file,
    so a message still says which one); a path names itself.

    A checkpoint of this toolkit records its model's architecture: loading
    it into a model whose architecture differs (even where every tensor
    shape matches, e.g. another TPN neck) raises `CheckpointError` naming
    both models and every field that differs, unless `other_architecture`
    (the tools' `--allow-other-architecture`). Other toolkits' checkpoints
    record none; their keys and shapes decide, as before.
    """
    name = source_name or _source_name(source)
    obj = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    sd, outer = extract_state_dict(obj)
    if not sd:
        raise CheckpointError(f"{name} holds no tensors")
    fmt = detect_format(sd)
    if fmt == "torchvision2d":
        raise CheckpointError(
            f"{name} is a 2D ImageNet ResNet, not a video model: use tpn.init_from_imagenet "
            "(CLI: --pretrained) to initialise a backbone from it"
        )
    saved_as = outer.get("name") if outer.get("format") == OWN_FORMAT else None
    report = LoadReport(source=name, format=fmt)
    saved_arch = outer.get("architecture") if outer.get("format") == OWN_FORMAT else None
    differences = architecture_differences(saved_arch, model.config) if isinstance(saved_arch, Mapping) else []
    if differences:
        what = f"{name} holds {saved_as!r}, whose architecture differs from {model.config.name!r}: " + "; ".join(
            differences
        )
        if not other_architecture:
            raise CheckpointError(
                f"{what}. Its outputs would not be {model.config.name!r}'s: load it into {saved_as!r} (the tool's "
                "model name), or pass --allow-other-architecture (Python: other_architecture=True) to load it anyway"
            )
        report.notes.append(f"{what} (loaded anyway: --allow-other-architecture)")
    elif saved_as and saved_as != model.config.name:
        report.notes.append(f"checkpoint was saved from {saved_as}, loading into {model.config.name}")
    keymap = foreign_map(fmt, model)
    if keymap is not None:
        sd = convert_state_dict(sd, keymap, reverse=True)
    try:
        _assign(model, dict(sd), name, strict, drop_classifier, report)
    except CheckpointError as e:
        if saved_as and saved_as != model.config.name:
            raise CheckpointError(
                f"{e}\n(the checkpoint was saved from {saved_as!r}, not {model.config.name!r})"
            ) from None
        raise
    if model.config.backbone == "tsm":
        _set_tsm_shortcut(model, fmt, outer, report)
    return report


def _set_tsm_shortcut(model: nn.Module, fmt: str, outer: Mapping, report: LoadReport) -> None:
    """Give TSM weights the shortcut input they were trained with."""
    if fmt == "mmaction2":
        shifted = False
    elif fmt == "original":
        shifted = True
    elif "shift_shortcut" in outer:  # our own file records it
        shifted = bool(outer["shift_shortcut"])
    else:
        return
    if shifted == model.backbone.shift_shortcut:
        return
    model.backbone.set_shift_shortcut(shifted)
    which = "shifted (original TPN)" if shifted else "unshifted (mmaction2)"
    msg = f"{fmt} TSM weights: projection shortcuts now take the {which} input, as these weights were trained"
    log.info(msg)
    report.notes.append(msg)


def init_from_imagenet(model: nn.Module, source: str | Path | Mapping) -> LoadReport:
    """Initialise the backbone from a torchvision-style 2D ResNet state dict.

    3D convs get the 2D kernel repeated over their temporal extent and
    divided by it (so a static clip gives the 2D response); BN statistics
    are copied; the 2D classifier is ignored. TSM backbones load as they are.
    """
    name = _source_name(source)
    obj = read_checkpoint(source) if isinstance(source, (str, Path)) else source
    sd, _ = extract_state_dict(obj)
    if detect_format(sd) != "torchvision2d":
        raise CheckpointError(f"{name} is not a torchvision-style 2D ResNet (expected keys 'conv1.weight', 'layer1.*')")
    sd = convert_state_dict({k: v for k, v in sd.items() if not k.startswith("fc.")}, TORCHVISION_2D, reverse=True)
    target = model.state_dict()
    out, report = {}, LoadReport(source=name, format="torchvision2d")
    for k, v in sd.items():
        if k not in target:
            raise CheckpointError(f"{name}: {k} has no place in {model.config.name}'s backbone (depth mismatch?)")
        t = target[k]
        if t.dim() == 5 and v.dim() == 4:
            v = v.unsqueeze(2).expand_as(t) / t.shape[2]
        if v.shape != t.shape:
            raise CheckpointError(f"{name}: {k} has shape {tuple(v.shape)}, the model wants {tuple(t.shape)}")
        out[k] = v
    missing = [
        k for k in target if k.startswith("backbone.") and k not in out and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise CheckpointError(f"{name} lacks {len(missing)} backbone tensors, e.g. {missing[:5]}")
    model.load_state_dict(out, strict=False)
    report.loaded = len(out)
    return report


# The config fields that decide what the weights compute (not the classes, data, test protocol or recipe).
ARCHITECTURE_FIELDS = ("backbone", "depth", "width", "blocks", "neck")
TRAINING_ONLY = {"neck.aux_head"}  # the auxiliary head trains the neck; outputs do not depend on it


def architecture_of(config) -> dict:
    """A model config's architecture fields as plain values (what a checkpoint records)."""
    out = {}
    for f in ARCHITECTURE_FIELDS:
        value = getattr(config, f)
        out[f] = _plain(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value)
    return out


def architecture_differences(saved: Mapping, config) -> list[str]:
    """'field: saved -> config' for every architecture field (neck fields one by one) that differs."""
    now, diffs = architecture_of(config), []
    for f in ARCHITECTURE_FIELDS:
        a, b = _plain(saved.get(f)), now[f]
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [
                f"{f}.{k}: {a.get(k)!r} -> {b.get(k)!r}"
                for k in sorted(set(a) | set(b))
                if a.get(k) != b.get(k) and f"{f}.{k}" not in TRAINING_ONLY
            ]
        elif a != b:
            diffs.append(f"{f}: {a!r} -> {b!r}")
    return diffs


def _plain(value):
    """Tuples as lists, recursively: configs hold tuples, a loaded checkpoint may hold either."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def save_checkpoint(path: str | Path, model: nn.Module, **extra) -> Path:
    """Write this project's format atomically (temporary file, fsync, rename), with the model's name and
    architecture, so loading it into another architecture is refused (`load_checkpoint`)."""
    module = getattr(model, "module", model)  # unwrap DDP
    obj = {
        "format": OWN_FORMAT,
        "version": 1,
        "name": module.config.name,
        "architecture": architecture_of(module.config),
        "num_classes": module.num_classes,
        "model": module.state_dict(),
        **extra,
    }
    if hasattr(module.backbone, "shift_shortcut"):  # TSM: which shortcut input the weights expect
        obj["shift_shortcut"] = module.backbone.shift_shortcut
    return atomic_write(path, lambda f: torch.save(obj, f))
