"""What the export tools leave on disk: JSON reports, published artifacts, and where they go.

Artifacts are written into a staging folder and `publish`ed (renamed into
place) only once complete, so nothing half-written ever carries a final
name; `<artifact>.validated.json` (`validated_marker`) is the Top-1 gate's
marker beside an artifact, which a newly published file never inherits.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import atomic_write_json, fsync_dir


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and numpy scalars as plain JSON values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_json(path, to_jsonable(obj))


def validated_marker(artifact: str | os.PathLike) -> Path:
    """`<artifact>.validated.json`: written only when the Top-1 gate passes on validation shards."""
    return Path(str(artifact) + ".validated.json")


def publish(files: list[Path], dest_dir: str | os.PathLike) -> Path:
    """Move staged files (dependencies first, the artifact last) into `dest_dir`; returns the artifact.

    A new artifact is not validated yet, so a stale `.validated.json`
    marker of an earlier file with the same name is removed first.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = dest_dir / files[-1].name
    validated_marker(final).unlink(missing_ok=True)
    for f in files:
        os.replace(f, dest_dir / f.name)
    fsync_dir(dest_dir)
    return final


def default_out_dir(name: str) -> Path:
    return Path("exports") / name
