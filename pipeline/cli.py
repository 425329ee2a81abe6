"""Shared pieces of the command-line tools: the help formatter, the loader's flags and `--split`.

The loader's flags (`--loader-device`, `--decoder`, `--workers`) are defined
once here, with one help text each, and added by every tool that builds a
`ClipLoader` (`tpn.train`, `tpn.test`, the benchmarks); `--split` by every
tool that reads a split of a shard folder (`tpn.test`, `export.validate`,
`export.trt`, `benchmarks.infer`), all resolved by `pipeline.resolve_split`.
This module is public (other packages import it by name). The flags' choices
are `pipeline.options`' vocabularies, the ones `ClipLoader` accepts; neither
module imports DALI or torch, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from pipeline.options import DECODERS, LOADER_DEVICES

ArgContainer = argparse.ArgumentParser | argparse._ArgumentGroup


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: X)' only where there is a default worth reading."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or "default" in text
        ):
            return text
        return super()._get_help_string(action)


def add_loader_device_arg(
    parser: ArgContainer, default: Any = "auto", flags: Sequence[str] = ("--loader-device",)
) -> None:
    """Where the loader decodes and augments. `flags` keeps an older name of the flag working."""
    parser.add_argument(
        *flags,
        dest="loader_device",
        choices=LOADER_DEVICES,
        default=default,
        help="where the loader decodes and augments: auto (the GPU when torch and DALI see one, else the CPU, "
        "where host threads do the work), cpu, or gpu (also spelt cuda) (default: auto)",
    )


def add_decoder_arg(parser: ArgContainer, default: Any = "auto") -> None:
    parser.add_argument(
        "--decoder",
        choices=DECODERS,
        default=default,
        help="which backend decodes (default: auto; the table is in pipeline.options). Frame shards: auto is "
        "host on a CPU (libjpeg-turbo + OpenCV in host threads) and nvjpeg on a GPU; cpu decodes in DALI. "
        "Video shards: nvdec or cpu (DALI; auto: cpu for VP9, nvdec for H.264 on a GPU), pyav: PyAV in "
        "host threads on either device (H.264 on a CPU too)",
    )


def add_workers_arg(parser: ArgContainer, default: Any = None, flags: Sequence[str] = ("--workers",)) -> None:
    """The loader's decoding threads (host threads or DALI's). `flags` keeps an older name of the flag working."""
    parser.add_argument(
        *flags,
        dest="workers",
        type=int,
        default=default,
        help="decoding threads per process, the host backend's or DALI's (default: the usable CPUs)",
    )


def add_split_arg(parser: ArgContainer, default: str = "val", of: str = "the shard folder") -> None:
    """Which `<split>-*.tar` of a shard folder to read; `of` names the flag that gives the folder."""
    parser.add_argument(
        "--split",
        default=default,
        help=f"which <split>-*.tar of {of} to read (default: {default}); 'all': every shard. A split that is not "
        "there is an error listing the splits present",
    )


def add_loader_args(parser: ArgContainer, defaults: bool = True) -> None:
    """--loader-device, --decoder and --workers; `defaults=False` leaves unset flags out of the namespace."""
    unset = argparse.SUPPRESS
    add_loader_device_arg(parser, "auto" if defaults else unset)
    add_decoder_arg(parser, "auto" if defaults else unset)
    add_workers_arg(parser, None if defaults else unset)
