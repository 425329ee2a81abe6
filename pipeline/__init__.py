"""Data side of the toolkit: dataset folders -> WebDataset shards -> clips.

`pipeline` never imports `tpn`; models describe what they need with a
`ClipSpec`, and the loader consumes it. The names below are the package's
public API (what `export/` and other packages may use); everything else in
its modules is internal.
"""

from pipeline.clip import IMAGENET_MEAN, IMAGENET_STD, ClipSpec
from pipeline.clips.colour import yuv_to_rgb_matrix
from pipeline.clips.plan import crop_origin, resize_shorter
from pipeline.errors import DataError, ShardError, ShardingError, ShardReadError
from pipeline.display import Display, is_partial, partial_words, source_display
from pipeline.frames import missing_numbers, number_ranges, numbered_frames
from pipeline.io.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    fsync_dir,
    fsync_file,
    sha256_file,
    staging_dir,
)
from pipeline.clips.sampling import clip_indices, decode_plan, view_crop_positions
from pipeline.format.classes import parse_classes
from pipeline.format.discovery import ALL_SPLITS, find_shards, resolve_split
from pipeline.format.index import index_path

# A location is a local path or a URL (s3://, gs://, https://, ...): `storage` reads either
# (storage.is_remote, .exists, .join, .name_of, .read_bytes, .size_of, .splits_in, ...).
from pipeline.io import storage

__all__ = [
    "ClipSpec",
    "ClipLoader",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ShardError",
    "ShardingError",
    "ShardReadError",
    "DataError",
    # crash-safe files
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "fsync_dir",
    "fsync_file",
    "sha256_file",
    "staging_dir",
    # the test protocol's frames and crops, the display geometry of a source video, frame folders
    "clip_indices",
    "decode_plan",
    "view_crop_positions",
    "Display",
    "source_display",
    "is_partial",
    "partial_words",
    "numbered_frames",
    "missing_numbers",
    "number_ranges",
    "yuv_to_rgb_matrix",
    "resize_shorter",
    "crop_origin",
    "frame_rgb",
    # shard folders, local or remote
    "find_shards",
    "index_path",
    "resolve_split",
    "ALL_SPLITS",
    "parse_classes",
    "storage",
]


def __getattr__(name: str):
    # The loader and the host backend pull in torch, PyAV and OpenCV: import them only when asked for, so
    # that the commands' --help stays fast.
    if name == "ClipLoader":
        from pipeline.clips.loader import ClipLoader

        return ClipLoader
    if name == "frame_rgb":
        from pipeline.clips.host import frame_rgb

        return frame_rgb
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
