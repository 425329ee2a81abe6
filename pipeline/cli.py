"""Shared pieces of the command-line tools: the help formatter and the loader's vocabulary.

`LOADER_DEVICES` and `DECODERS` are what `ClipLoader` accepts. This module
imports neither DALI nor torch, so `--help` stays fast.
"""

from __future__ import annotations

import argparse

LOADER_DEVICES = ("auto", "cpu", "gpu", "cuda")  # "cuda" is another name for "gpu"
DECODERS = ("auto", "nvdec", "cpu", "pyav", "nvjpeg")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show '(default: X)' only where there is a default worth reading."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or "default" in text:
            return text
        return super()._get_help_string(action)
