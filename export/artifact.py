"""What an exported file says about itself, checked against the model and protocol it is used with.

The Top-1 gate (`export.validate`) and `export.predict` both run these checks
before they trust an artifact's outputs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from export import runtime
from export.errors import ExportError
from export.onnxfile import read_metadata
from export.source import ModelSource


def artifact_metadata(artifact: str | os.PathLike) -> dict[str, str]:
    """What an ONNX file or an OpenVINO IR records about its origin (engines record nothing)."""
    if not Path(artifact).is_file():
        raise ExportError(f"{artifact} does not exist")
    if str(artifact).endswith(runtime.OPENVINO_SUFFIXES):
        return runtime.openvino_metadata(artifact)
    if not str(artifact).endswith(".onnx"):
        return {}
    return read_metadata(artifact)


def calibration_of(meta: dict[str, str]) -> dict | None:
    """The calibration an INT8 file records (export.int8): data location, split, clips, fingerprint."""
    text = meta.get("calibration")
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def check_artifact_model(meta: dict[str, str], artifact: str | os.PathLike, name: str) -> None:
    if meta.get("model") and meta["model"] != name:
        raise ExportError(f"{artifact} was exported from {meta['model']}, not {name}: pass --model {meta['model']}")


def check_artifact_weights(meta: dict[str, str], artifact: str | os.PathLike, source: ModelSource) -> None:
    sha = meta.get("checkpoint_sha256")
    if sha and source.checkpoint_sha256 and sha != source.checkpoint_sha256:
        raise ExportError(
            f"{artifact} was exported from other weights than {source.checkpoint} "
            f"(sha256 {sha[:12]}... vs {source.checkpoint_sha256[:12]}...): pass the checkpoint it was exported from"
        )


def check_view_size(runner: runtime.Runner, views_hw: tuple[int, int], model_name: str) -> None:
    """The artifact must take the (H, W) views the test protocol gives (the gate and export.predict feed them)."""
    want, got = tuple(runner.input_shape[-2:]), tuple(views_hw)
    if want != got:
        raise ExportError(
            f"the artifact takes {want[0]}x{want[1]} clips but {model_name}'s test protocol gives "
            f"{got[0]}x{got[1]} views: export with --size test (the Top-1 gate and export.predict feed "
            "test-protocol views)"
        )
