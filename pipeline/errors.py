"""The data side's error family: one base for everything wrong with shards, a name per stage.

    ShardError                  catch this to handle any shard problem
    ├── ShardingError           `pipeline.shard` could not make the shards (bad source, folder in use, ...)
    │   ├── RejectedInputsError (in pipeline.shard.core) strict run, some inputs rejected
    │   └── MergeError          (in pipeline.shard.merge) `--part` outputs that do not fit together
    ├── ShardReadError          shards given to a reader are missing, empty, truncated or inconsistent
    └── DataError               a sample failed to decode while a loader iterated

Each also derives from the builtin its callers caught before the family
existed (RuntimeError or ValueError), so `except ValueError` code keeps working.
"""

from __future__ import annotations


class ShardError(Exception):
    """Something is wrong with shards being made or read; the message names the file and what to do."""


class ShardingError(ShardError, RuntimeError):
    """A sharding request failed as a whole (bad source, output folder in use, no encoder)."""


class ShardReadError(ShardError, ValueError):
    """A shard, its index or a sample in it is missing or malformed."""


class DataError(ShardError, RuntimeError):
    """Decoding failed on a sample during iteration (corrupt video or frame, wrong frame count)."""


# What every message about a damaged shard ends with ({dir}: the shard folder).
VERIFY_HINT = (
    "check the shards with `python -m pipeline.verify {dir}` and re-create bad ones with `python -m pipeline.shard`"
)
