"""A folder of numbered JPEG frames (Something-Something V1's layout): which files are its frames, and how
a gap in their numbering is named. The rules `pipeline.shard` and `export.predict` share."""

from __future__ import annotations

import re
from pathlib import Path

FRAME_NAME = re.compile(r"(\d+)\.(jpe?g)", re.I)  # 00001.jpg: the number, the suffix as written


def numbered_frames(folder: Path) -> list[tuple[int, Path]]:
    """A folder's numbered JPEG files by number; empty when it is no frame folder."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_file() and (m := FRAME_NAME.fullmatch(p.name))]
    return sorted(found)


def missing_numbers(numbers: list[int]) -> list[int]:
    """Numbers absent between the smallest and the largest of sorted `numbers` (a gap in the numbering)."""
    return sorted(set(range(numbers[0], numbers[-1] + 1)) - set(numbers)) if numbers else []


def number_ranges(numbers: list[int]) -> str:
    """[11, 12, 20] -> '11-12, 20'."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(f"{a}-{b}" if a != b else str(a) for a, b in runs)
