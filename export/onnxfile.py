"""ONNX files as this toolkit writes them: the metadata they carry, their clip input, writing them.

A leaf module (only `export.errors` below it), so that the marker, the
runtime and the exporters can all read files without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

import onnx

from export.errors import ExportError
from pipeline import fsync_file

INPUT_NAME = "clips"
OUTPUT_NAME = "logits"
META_PREFIX = "tpn."  # metadata keys this toolkit writes
TWO_GB = 2**31  # protobuf's limit for one file


def add_metadata(proto: onnx.ModelProto, items: dict[str, object]) -> None:
    """Record what the file was made from, so later steps (FP16, gate) need not be told again."""
    for key, value in items.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_PREFIX + key, str(value)


def load_onnx(path: str | os.PathLike, *, weights: bool = True) -> onnx.ModelProto:
    """The ONNX file at `path` (without its external weights unless `weights`); a file that does not parse is
    an ExportError naming it."""
    try:
        return onnx.load(str(path), load_external_data=weights)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ExportError(
            f"{path} is not an ONNX file that can be read ({type(err).__name__}): export it again"
        ) from None


def _graph_only(path_or_proto: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    """The model as given, or its file without the weights (what the readers below need)."""
    if isinstance(path_or_proto, onnx.ModelProto):
        return path_or_proto
    return load_onnx(path_or_proto, weights=False)


def read_metadata(path_or_proto: str | os.PathLike | onnx.ModelProto) -> dict[str, str]:
    proto = _graph_only(path_or_proto)
    return {p.key[len(META_PREFIX) :]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}


def onnx_clip_shape(path_or_proto: str | os.PathLike | onnx.ModelProto) -> tuple[int, ...]:
    """(3, T, H, W) of the model's clip input (the batch dimension dropped)."""
    dims = _graph_only(path_or_proto).graph.input[0].type.tensor_type.shape.dim
    return tuple(int(d.dim_value) for d in dims[1:])


def write_model(proto: onnx.ModelProto, path: Path, *, external_data: bool | None = None) -> list[Path]:
    """Write `proto` to `path` (inside a staging folder), fsynced; returns the files written.

    Single file below 2 GB (protobuf's limit); above it, or when asked,
    the weights go to `<path name>.data` beside it.
    """
    if external_data is None:
        external_data = proto.ByteSize() >= TWO_GB
    files = [path]
    if external_data:
        data_name = path.name + ".data"
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        files.insert(0, path.parent / data_name)  # data first: the .onnx never names a missing file
    else:
        path.write_bytes(proto.SerializeToString())
    for f in files:
        fsync_file(f)
    return files
