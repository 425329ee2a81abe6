"""`<artifact>.validated.json`: what a passing Top-1 gate vouches for, and the check that it still holds.

The marker binds the verdict to everything it depended on: the artifact's
sha256, the weights' sha256 (and where they were), the model name, the
validation data (`export.shards.shard_fingerprint` of the split), the number of
videos, the test protocol, the thresholds, the results, and the toolkit's
version and git commit when known. `check_marker` refuses a marker when

  - the artifact, or an ONNX file's recorded weights, no longer match;
  - the checkpoint or shards passed in differ from the recorded ones;
  - the recorded checkpoint or shard folder is still where it was but its
    contents changed (so editing the data in place invalidates the marker).

A recorded checkpoint or shard folder that is no longer there (an artifact
copied to a server without its data) cannot be re-checked: that is listed
in `notes`, and passing `checkpoint=` / `val_shards=` checks them against
copies elsewhere.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from export import runtime
from export.errors import ExportError
from export.onnxfile import read_metadata
from export.outputs import validated_marker, write_json
from export.shards import shard_fingerprint
from pipeline import sha256_file, storage

MARKER_FORMAT = 2


@dataclass
class MarkerCheck:
    """Whether a marker vouches for an artifact as it is now, and why not."""

    valid: bool
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    marker: dict | None = None

    def summary(self) -> str:
        if self.valid:
            return "validated" + (f" ({'; '.join(self.notes)})" if self.notes else "")
        return "not validated: " + "; ".join(self.problems)


# ----------------------------------------------------------------- provenance


def toolkit_version() -> str:
    try:
        from importlib.metadata import version

        return version("tpn-toolkit")
    except Exception:  # running from a checkout that is not installed
        return "unknown (not installed)"


def git_argv(root: Path, *args: str) -> list[str]:
    return ["git", "-C", str(root), *args]


def git_state(root: Path | None = None) -> dict:
    """{"commit": sha or None, "dirty": bool or None} of the checkout this code runs from."""
    root = root or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(git_argv(root, "rev-parse", "HEAD"), capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(
            git_argv(root, "status", "--porcelain", "--untracked-files=no"), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}


def provenance() -> dict:
    return {
        "toolkit": toolkit_version(),
        **git_state(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


# ----------------------------------------------------------------- writing and reading


def write_marker(artifact: str | os.PathLike, payload: dict) -> Path:
    """Write the marker (atomically) with the artifact's hash and the format version added."""
    art = Path(artifact)
    body = {
        "format": MARKER_FORMAT,
        "artifact": {"file": art.name, "sha256": sha256_file(art), "bytes": art.stat().st_size},
        **payload,
        "provenance": provenance(),
    }
    return write_json(validated_marker(art), body)


def read_marker(artifact: str | os.PathLike) -> dict | None:
    try:
        data = json.loads(validated_marker(artifact).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------- checking


def check_marker(
    artifact: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    val_shards: str | os.PathLike | None = None,
    model: str | None = None,
) -> MarkerCheck:
    """Does `<artifact>.validated.json` still vouch for `artifact` (see the module docstring)?"""
    art = Path(artifact)
    if not art.is_file():
        return MarkerCheck(False, [f"{art} does not exist"])
    marker = read_marker(art)
    if marker is None:
        return MarkerCheck(False, [f"no readable {validated_marker(art).name}: run the Top-1 gate with --val-shards"])
    if marker.get("format") != MARKER_FORMAT:
        return MarkerCheck(
            False, ["the marker was written by an older toolkit and binds too little: re-run the gate"], marker=marker
        )
    check = MarkerCheck(True, marker=marker)
    if marker["artifact"]["sha256"] != sha256_file(art):
        check.problems.append(f"{art.name} changed since it was validated (sha256 differs)")
        check.valid = False
        return check  # nothing else it records applies to another file
    if model is not None and marker.get("model") != model:
        check.problems.append(f"validated as {marker.get('model')}, not {model}")
    _check_onnx_weights(art, marker, check)
    _check_checkpoint(marker, checkpoint, check)
    _check_shards(marker, val_shards, check)
    _check_calibration(marker, check)
    check.valid = not check.problems
    return check


def _check_onnx_weights(art: Path, marker: dict, check: MarkerCheck) -> None:
    if art.suffix != ".onnx":
        return

    recorded = read_metadata(art).get("checkpoint_sha256") or None
    if recorded != marker["checkpoint"].get("sha256"):
        check.problems.append(f"{art.name} records other weights than the ones it was validated with")


def _check_checkpoint(marker: dict, checkpoint: str | os.PathLike | None, check: MarkerCheck) -> None:
    want = marker["checkpoint"].get("sha256")
    recorded = _recorded(marker["checkpoint"].get("path"))
    path = Path(checkpoint) if checkpoint is not None else (Path(recorded) if recorded else None)
    if path is None:
        if want is not None:
            check.notes.append(f"checkpoint {marker['checkpoint'].get('path')} is not there: weights not re-checked")
        return
    if not path.is_file():
        check.problems.append(f"checkpoint {path} does not exist")
    elif sha256_file(path) != want:
        check.problems.append(f"the weights changed: {path} is not the checkpoint the artifact was validated with")


def _check_shards(marker: dict, val_shards: str | os.PathLike | None, check: MarkerCheck) -> None:
    data = marker["shards"]
    folder = val_shards if val_shards is not None else _recorded(data.get("location"))
    _check_fingerprint("validation", data, folder, check, "what the artifact was validated on")


def _check_calibration(marker: dict, check: MarkerCheck) -> None:
    """An INT8 file's calibration data, when it is still where it was, must be what its scales came from."""
    data = marker.get("calibration")
    if data:
        changed = "what the INT8 scales came from; quantize again (python -m export.int8) and gate the new file"
        _check_fingerprint("calibration", data, _recorded(data.get("location")), check, changed)


def _check_fingerprint(what: str, data: dict, folder, check: MarkerCheck, changed: str) -> None:
    """The split `data` records, in `folder` (None: not there), must still have the fingerprint it recorded."""
    if folder is None:
        check.notes.append(f"{what} shards {data.get('location')} are not there: {what} data not re-checked")
        return
    try:
        now = shard_fingerprint(folder, data.get("split")).sha256
    except Exception as e:  # missing split, unreadable folder: the binding cannot hold
        check.problems.append(f"cannot fingerprint the {what} shards {folder}: {e}")
        return
    if now != data.get("fingerprint"):
        check.problems.append(f"the {what} data changed: split {data.get('split')!r} of {folder} is not {changed}")


def _recorded(location: str | None) -> str | None:
    """A recorded path or URL, if it is still there."""
    try:
        return location if location and storage.exists(location) else None
    except (OSError, ImportError):  # an unreachable store: nothing to re-check against
        return None


class NotValidated(ExportError):
    """No valid `<artifact>.validated.json` vouches for the file (`load_validated`)."""


def load_validated(
    path: str | os.PathLike,
    *,
    checkpoint: str | os.PathLike | None = None,
    val_shards: str | os.PathLike | None = None,
    **runtime_options,
):
    """`export.runtime.load(path, **runtime_options)`, only when the file's Top-1 gate marker still holds
    (`check_marker`, against `checkpoint` and `val_shards` when given, else against those it records);
    else `NotValidated` saying why."""
    check = check_marker(path, checkpoint=checkpoint, val_shards=val_shards)
    if not check.valid:
        raise NotValidated(f"{path} is {check.summary()}")
    return runtime.load(path, **runtime_options)
