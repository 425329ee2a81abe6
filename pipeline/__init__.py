"""Data side of the toolkit: dataset folders -> WebDataset shards -> clips.

`pipeline` never imports `tpn`; models describe what they need with a
`ClipSpec`, and the loader consumes it.
"""

from pipeline.clip import IMAGENET_MEAN, IMAGENET_STD, ClipSpec
from pipeline.errors import DataError, ShardError, ShardingError, ShardReadError

__all__ = [
    "ClipSpec", "ClipLoader", "IMAGENET_MEAN", "IMAGENET_STD",
    "ShardError", "ShardingError", "ShardReadError", "DataError",
]  # fmt: skip


def __getattr__(name: str):
    # The loader pulls in DALI; import it only when asked for.
    if name == "ClipLoader":
        from pipeline.loader import ClipLoader

        return ClipLoader
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
