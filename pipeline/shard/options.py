"""What a sharding run is told besides SRC and OUT, as one frozen record.

`shard_dataset(src, out, **keywords)` takes the flat keywords the command
line has (`codec=`, `short_side=`, `workers=`, ...) and builds a
`ShardOptions` once (`ShardOptions.of`); everything below it passes that one
object. Three groups: what is read (layout, split, annotations, classes,
part), what decides the shards' bytes (the encode settings and the packing:
all in the fingerprint, so a resumed run must match them), and how the run
goes (workers, engine, strictness, ...: free to change between runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from pipeline.shard.ffmpeg import EncodeSettings

DEFAULT_SHARD_SIZE = 1_000_000_000
DEFAULT_MIN_FRAMES = 8
DEFAULT_TIMEOUT = 600.0
# The keywords that make the EncodeSettings (codec, short_side, size, fps, gop, quality, threads).
ENCODE_KEYWORDS = ("codec", "short_side", "size", "fps", "gop", "quality", "threads")


def parse_part(part: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """'2/8' -> (2, 8): 0-based part index out of n."""
    if part is None or isinstance(part, tuple):
        return part
    try:
        i, n = (int(x) for x in part.split("/"))
    except ValueError:
        raise ValueError(f"part must look like I/N (e.g. 0/4), got {part!r}") from None
    if not 0 <= i < n:
        raise ValueError(f"part {part}: need 0 <= I < N (parts are numbered from 0)")
    return i, n


@dataclass(frozen=True, kw_only=True)
class ShardOptions:
    # what is read
    layout: str = "auto"
    split: str | None = None
    annotations: tuple[Path, ...] = ()
    classes: str | os.PathLike | list[str] | None = None  # a classes.json, or the names in label order
    part: tuple[int, int] | None = None
    # what decides the shards' bytes (the fingerprint)
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    shard_size: int = DEFAULT_SHARD_SIZE
    shard_samples: int | None = None
    min_frames: int = DEFAULT_MIN_FRAMES
    timeout: float = DEFAULT_TIMEOUT
    seed: int = 0
    # how the run goes
    workers: int | None = None
    engine: str = "local"
    ray_address: str | None = None
    work: Path | None = None  # with a URL output: where shards are made before upload
    strict: bool = False
    overwrite: bool = False
    append: bool = False  # add the inputs new since the folder was made, in new shards (pipeline.shard.append)
    progress: bool = False

    def __post_init__(self) -> None:
        if self.shard_size < 1 or (self.shard_samples is not None and self.shard_samples < 1) or self.min_frames < 1:
            raise ValueError("shard_size, shard_samples and min_frames must be >= 1")
        if self.append and (self.overwrite or self.part is not None):
            raise ValueError("--append adds to a finished folder: it goes with neither --overwrite nor --part")

    @classmethod
    def of(cls, **keywords) -> ShardOptions:
        """From `shard_dataset`'s flat keywords; an unknown one is a TypeError naming it."""
        known = {f.name for f in fields(cls)} - {"encode"}
        unknown = sorted(set(keywords) - known - set(ENCODE_KEYWORDS))
        if unknown:
            raise TypeError(f"shard_dataset() got unexpected keyword argument(s) {', '.join(unknown)}")
        encode = EncodeSettings(**{k: keywords.pop(k) for k in ENCODE_KEYWORDS if k in keywords})
        if keywords.get("annotations") is not None:
            keywords["annotations"] = tuple(Path(a) for a in keywords["annotations"])
        else:
            keywords.pop("annotations", None)
        if keywords.get("work") is not None:
            keywords["work"] = Path(keywords["work"])
        return cls(encode=encode, **{**keywords, "part": parse_part(keywords.get("part"))})

    def packing(self) -> dict:
        """The settings besides the encode's that decide the shards (recorded in the manifest, in this order)."""
        return {
            "min_frames": self.min_frames,
            "shard_size": self.shard_size,
            "shard_samples": self.shard_samples,
            "seed": self.seed,
            "timeout": self.timeout,
        }
