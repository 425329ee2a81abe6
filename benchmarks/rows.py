"""A result row as the tables and charts read it: whether it may be shown as valid, and the names the
loader benchmark's contenders are shown by."""

from __future__ import annotations

LOADER_LABELS = {
    "frames": "ClipLoader, frame shards (host)",
    "frames-dali": "ClipLoader, frame shards (DALI CPU)",
    "frames-whole": "ClipLoader, frame shards (host, whole-frame decode)",
    "rawframes": "mmaction2-style rawframes",
    "vp9": "ClipLoader, VP9 shards (host)",
    "vp9-dali": "ClipLoader, VP9 shards (DALI CPU)",
    "decord": "mmaction2-style decord, H.264",
}


def row_problem(r: dict) -> str | None:
    """Why a row must not be drawn, tabled as valid or picked as a rate: flagged after its run
    (`invalid`), or it did not run as its name says (`ok: False`, with the run's `problem`)."""
    if r.get("invalid"):
        return str(r["invalid"])
    if r.get("ok") is False:
        return str(r.get("problem") or "did not run as named")
    return None


def valid_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if isinstance(r, dict) and row_problem(r) is None]
