"""How the export tools fail: one exception family, each member with the exit status its CLIs return."""

from __future__ import annotations

import argparse
from typing import Any

EXIT_OK = 0
EXIT_FAILED = 1  # a check failed: parity, FP16 tolerance or the Top-1 gate
EXIT_MISSING = 2  # a dependency is missing (TensorRT, a CUDA GPU, onnxruntime)
EXIT_BAD_INPUT = 3  # unknown model name, unreadable or mismatched checkpoint, missing file

EXIT_CODES_HELP = (
    "exit status: 0 success; 1 a check failed (parity, FP16 tolerance or the Top-1 gate); "
    "2 a dependency is missing (or a usage error); 3 bad input (unknown model name, "
    "checkpoint of another model, missing file)"
)


class ExportError(RuntimeError):
    """An export step that cannot go on; the message says what went wrong and what to do."""

    exit_code = EXIT_BAD_INPUT


class MissingDependencyError(ExportError):
    """An optional dependency (TensorRT, a CUDA GPU, ...) is not available here."""

    exit_code = EXIT_MISSING


class CheckFailed(ExportError):
    """An artifact was built but does not agree with its reference; `report` says by how much."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


def positive_int(text: str) -> int:
    """argparse type of counts and sizes that must be at least 1: 0 or less is a usage error naming the flag."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
