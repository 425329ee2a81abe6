"""The command line of `python -m tpn.train`: flags -> `TrainSettings` (new or resumed run) -> `tpn.trainer.train`.

Flags that are not given stay out of the parsed namespace
(`argparse.SUPPRESS`), so a new run takes the zoo recipe's value and a
resumed run keeps its saved one (`tpn.train_settings`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from tpn import rundir
from tpn.cli import add_device_args, add_other_architecture_arg, add_threads_arg
from tpn.distributed import env_from_environ
from tpn.engine import COMPILE_PRESETS, DEFAULT_COMPILE
from tpn.trainer import NonFiniteLoss, train
from tpn.train_settings import BN_IMPLS, TrainSettings, read_resume_checkpoint, resolve_settings, resumed_settings


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tpn.train",
        description="Train a zoo model on WebDataset shards (one process, or one per GPU under "
        "`torchrun --nproc-per-node N -m tpn.train ...`). Unset recipe flags take the zoo config's "
        "recipe; with --resume, unset flags keep the resumed run's settings.",
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override
    )
    p.add_argument("name", nargs="?", help="zoo model name (see `python -m tpn`); optional with --resume")
    _add_data_args(p.add_argument_group("data and outputs"))
    _add_recipe_args(p.add_argument_group("recipe (defaults from the zoo config's TrainRecipe)"))
    i = p.add_argument_group("initialisation")
    i.add_argument("--num-classes", type=int, help="classifier size (default: the shards' classes.json count)")
    i.add_argument("--pretrained", help="2D ImageNet ResNet (torchvision-style .pth) to inflate into the backbone")
    i.add_argument(
        "--checkpoint",
        help="initial weights (this toolkit's, original TPN's or mmaction2's); a "
        "classifier of another size is left freshly initialised",
    )
    add_other_architecture_arg(i)
    _add_logging_args(p.add_argument_group("checkpoints and logging"))
    _add_execution_args(
        p.add_argument_group("execution", "under torchrun, --device cuda is each process's GPU (its LOCAL_RANK)")
    )
    return p


def _add_data_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--train",
        nargs="+",
        help="training shards: a shard directory (its --train-split shards) or .tar paths, read as given",
    )
    g.add_argument(
        "--val",
        nargs="+",
        help="validation shards: a shard directory (its --val-split shards) or .tar "
        "paths, read as given; omit to skip validation",
    )
    g.add_argument("--train-split", help=_split_help("a --train directory", "train"))
    g.add_argument("--val-split", help=_split_help("a --val directory", "val"))
    g.add_argument(
        "--out", help="RUN_DIR for checkpoints, metrics, curves and summary (default with --resume: its run)"
    )
    g.add_argument("--resume", help="continue exactly from RUN_DIR (its newest checkpoint) or a step_*.pth file")


def _split_help(of: str, default: str) -> str:
    """The words of pipeline.cli's --split (the same rule, `pipeline.resolve_split`) for tpn.train's two flags."""
    return (
        f"which <split>-*.tar of {of} to read (default: {default}); 'all': every shard. A split that is not "
        "there is an error listing the splits present"
    )


def _add_recipe_args(r: argparse._ArgumentGroup) -> None:
    r.add_argument("--epochs", type=int, help="epochs to train")
    r.add_argument("--batch-size", type=int, help="clips per process and step (global batch = this x processes)")
    r.add_argument("--lr", type=float, help="learning rate (default: recipe lr x global batch / recipe lr_batch)")
    r.add_argument("--momentum", type=float, help="SGD momentum")
    r.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum")
    r.add_argument("--weight-decay", type=float, help="L2 weight decay")
    r.add_argument("--clip-grad", type=float, help="max L2 norm of the gradients (0 = no clipping)")
    r.add_argument("--lr-steps", type=int, nargs="*", help="epochs at which the lr is multiplied by --lr-gamma")
    r.add_argument("--lr-gamma", type=float, help="step-decay factor")
    r.add_argument("--warmup-epochs", type=float, help="linear lr warmup length in epochs (0 = none)")
    r.add_argument("--aux-weight", type=float, help="TPN auxiliary loss weight")
    r.add_argument("--dropout", type=float, help="dropout before the classifier (default: the config's, 0.5)")
    r.add_argument(
        "--bn-eval",
        action=argparse.BooleanOptionalAction,
        help="keep BatchNorm in eval mode: fixed running statistics, trained affine (default: off)",
    )


def _add_logging_args(c: argparse._ArgumentGroup) -> None:
    c.add_argument("--save-every", type=int, help="also checkpoint every N steps (default: 0 = epoch ends only)")
    c.add_argument("--keep-last", type=int, help="rolling checkpoints to keep (default: 3; 0 = all)")
    c.add_argument("--log-every", type=int, help="read the loss back every N steps (default: 20)")
    c.add_argument("--val-every", type=int, help="validate every N epochs, and after the last (default: 1)")
    c.add_argument(
        "--val-views",
        choices=["single", "protocol"],
        help="validation views: one centre clip (default) or the full test protocol",
    )
    c.add_argument("--max-steps", type=int, help="stop after this many steps in total, with a checkpoint")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def _add_execution_args(e: argparse._ArgumentGroup) -> None:
    e.add_argument("--seed", type=int, help="seed of data order, augmentation and init (default: 0)")
    add_device_args(e, defaults=False)  # --device, --loader-device, --decoder, --workers, as tpn.test has them
    add_threads_arg(e, argparse.SUPPRESS)
    e.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on GPU only)")
    e.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        help="capture the whole step in one CUDA graph (default: on; GPU only)",
    )
    e.add_argument(
        "--compile",
        nargs="?",
        const=DEFAULT_COMPILE,
        choices=list(COMPILE_PRESETS),
        metavar="PRESET",
        help=f"torch.compile the forward + loss, compiled during the warm-up steps (default: off); "
        f"PRESET is a set of Inductor options: {', '.join(COMPILE_PRESETS)} "
        f"(tpn.engine.COMPILE_PRESETS; without one: {DEFAULT_COMPILE})",
    )
    e.add_argument("--no-compile", dest="compile", action="store_const", const=None, help="do not compile (default)")
    e.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        help="channels_last_3d memory format (default: on for 3D models on GPU)",
    )
    e.add_argument(
        "--bn-impl",
        choices=list(BN_IMPLS),
        help="BatchNorm3d kernels: auto (default) runs NDHWC activations on a GPU through PyTorch's "
        "channels-last batch-norm kernels (tpn.layers.BatchNorm3d); native is nn.BatchNorm3d's",
    )


def settings_from_args(args: argparse.Namespace) -> tuple[TrainSettings, dict | None]:
    """Resolve the CLI into settings (and the checkpoint to resume from, loaded)."""
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in ("name", "resume")}
    name = getattr(args, "name", None)
    if "resume" in vars(args):
        path, ckpt = read_resume_checkpoint(args.resume)
        return resumed_settings(ckpt["settings"], given, name, path), ckpt
    if not name:
        raise ValueError("give a model name (see `python -m tpn`), or --resume RUN_DIR")
    for needed in ("train", "out"):
        if needed not in given:
            raise ValueError(f"--{needed} is required for a new run")
    return resolve_settings(name, given), None


def interrupted_message(settings: TrainSettings | None) -> str:
    """What an interrupted run says: its last checkpoint and the command that resumes from it."""
    if settings is None:
        return "interrupted before the run started; nothing was written"
    checkpoints = rundir.list_checkpoints(Path(settings.out))
    if not checkpoints:
        return f"interrupted before the first checkpoint of {settings.out}: run the same command again to start over"
    return (
        f"interrupted: the last checkpoint is {checkpoints[-1]} (steps after it are lost); resume with "
        f"`python -m tpn.train --resume {settings.out}`"
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    settings = None
    try:
        settings, ckpt = settings_from_args(args)
        summary = train(settings, resume=ckpt)
    except KeyboardInterrupt:
        if env_from_environ().is_main:
            print(f"\n{interrupted_message(settings)}", file=sys.stderr)
        return 130
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as e:  # bad names, paths, shards, checkpoints
        print(f"error: {e}", file=sys.stderr)
        return 1
    if env_from_environ().is_main:
        print(summary.text())
        print(json.dumps(dataclasses.asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
