"""`python -m pipeline.shard SRC --out OUT`: any video dataset folder -> WebDataset shards.

Library entry points: `shard_dataset` (takes a `ShardOptions` or its
keywords, returns a `ShardReport`) and `merge_parts` (joins the outputs of
`--part i/n` runs).
"""

from pipeline.errors import ShardingError
from pipeline.shard.core import RejectedInputsError, ShardReport, shard_dataset
from pipeline.shard.manifest import ShardRecord, read_class_file, read_manifest
from pipeline.shard.merge import MergeError, MergeReport, merge_parts
from pipeline.shard.options import DEFAULT_MIN_FRAMES, DEFAULT_SHARD_SIZE, ShardOptions

__all__ = [
    "DEFAULT_MIN_FRAMES",
    "DEFAULT_SHARD_SIZE",
    "MergeError",
    "MergeReport",
    "RejectedInputsError",
    "ShardingError",
    "ShardRecord",
    "ShardReport",
    "ShardOptions",
    "read_class_file",
    "merge_parts",
    "read_manifest",
    "shard_dataset",
]
