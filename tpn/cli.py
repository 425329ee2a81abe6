"""Command-line flags that `tpn.train`, `tpn.test`, `export.*` and the benchmarks share: one definition, one help.

The model's flags are here: where it runs (`--device`), torch's CPU
threads (`--threads`) and the weights it loads (`--checkpoint`). The loader's (`--loader-device`, `--decoder`,
`--workers`) live with the loader, in `pipeline.cli`. `add_device_args`
gives a tool the model's and the loader's device flags together, so the
tools that train and test cannot drift apart.

A builder's `default` is what an unset flag holds; `argparse.SUPPRESS`
leaves an unset flag out of the namespace (how `tpn.train` tells "given"
from "not given" when it resumes a run). This module is public (`export`
imports it by name).
"""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.cli import ArgContainer, add_loader_args


def add_device_arg(parser: ArgContainer, default: Any = "auto") -> None:
    """Where the model runs (see `tpn.distributed.resolve_torch_device`)."""
    parser.add_argument(
        "--device",
        default=default,
        help="where the model runs: auto (the GPU when there is one), cpu, cuda or cuda:N (default: auto)",
    )


def add_checkpoint_arg(parser: ArgContainer, required: bool = False, what: str = "weights") -> None:
    """The weights a tool loads, in any format `tpn.load_checkpoint` reads; `what` says what they are for."""
    unset = "required" if required else "default: random weights, and the tool says so"
    parser.add_argument(
        "--checkpoint",
        required=required,
        help=f"{what}: a .pth of this toolkit's, the original TPN's or mmaction2's format ({unset})",
    )
    add_other_architecture_arg(parser)


def add_other_architecture_arg(parser: ArgContainer) -> None:
    """The one way to load a checkpoint of this toolkit into a model of another architecture."""
    parser.add_argument(
        "--allow-other-architecture",
        action="store_true",
        help="load a checkpoint of this toolkit even when it records another architecture than the "
        "model's (e.g. another TPN neck with the same tensor shapes); without it that is an "
        "error naming both models and what differs",
    )


def add_threads_arg(parser: ArgContainer, default: Any = None) -> None:
    parser.add_argument(
        "--threads", type=int, default=default, help="torch CPU threads per process (default: torch's choice)"
    )


def add_device_args(parser: ArgContainer, defaults: bool = True) -> None:
    """--device, --loader-device, --decoder and --workers; `defaults=False` leaves unset flags out of the namespace."""
    add_device_arg(parser, "auto" if defaults else argparse.SUPPRESS)
    add_loader_args(parser, defaults)
