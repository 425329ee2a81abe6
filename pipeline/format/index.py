"""The `.idx` files beside the tars: DALI's `wds2idx` format, written and parsed.

`v1.2 N` on the first line, then one line per sample of `ext offset size
name` groups (one group per member of the sample, in tar order).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import ShardReadError
from pipeline.io import storage

IDX_VERSION = "v1.2"


def index_path(tar):
    """The `.idx` beside a shard (a path, or a URL)."""
    if isinstance(tar, Path):
        return tar.with_suffix(".idx")
    return str(tar)[: -len(".tar")] + ".idx" if str(tar).endswith(".tar") else f"{tar}.idx"


def format_index(samples: list[list[tuple[str, int, int, str]]]) -> str:
    """DALI index text for samples given as [(ext, data_offset, size, member_name), ...]."""
    lines = [f"{IDX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{e} {o} {s} {n}" for e, o, s, n in comps) for comps in samples]
    return "\n".join(lines) + "\n"


def read_index(idx, tar) -> list[dict[str, tuple[int, int, str]]]:
    """Parse a `wds2idx` index into per-sample {ext: (offset, size, member name)}."""
    try:
        text = storage.read_bytes(idx).decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"missing DALI index {idx} for shard {tar}: build it with `wds2idx {tar} {idx}` "
            f"or re-run `python -m pipeline.shard`"
        ) from None
    lines = text.splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or not head[0].startswith("v1.") or not head[1].isdigit():
        raise ShardReadError(
            f"{idx} is not a DALI webdataset index (first line {lines[:1]}): rebuild it with `wds2idx {tar} {idx}`"
        )
    samples = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) % 4:
            raise ShardReadError(f"{idx} line {number} is malformed: rebuild it with `wds2idx {tar} {idx}`")
        samples.append(
            {parts[i]: (int(parts[i + 1]), int(parts[i + 2]), parts[i + 3]) for i in range(0, len(parts), 4)}
        )
    if len(samples) != int(head[1]):
        raise ShardReadError(
            f"{idx} announces {head[1]} samples but lists {len(samples)}: rebuild it with `wds2idx {tar} {idx}`"
        )
    return samples
