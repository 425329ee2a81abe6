"""The shards' bytes do not drift: small inputs checked in, sharded as three commands would, against the
digests of every file the code of record wrote for them (`tests/fixtures/golden/digests.json`).

- Something-Something V1 frame folders with `--codec jpeg --short-side keep`:
  their JPEGs are stored as they are, so these bytes depend on the packing
  alone, whatever ffmpeg runs;
- four small H.264 clips as VP9 and as frame shards: these bytes also depend
  on the encoders, so they are compared when the ffmpeg that runs is the one
  the digests were recorded with, and skipped with its name otherwise.

The manifest is compared as written, less its `run` record and the source's
absolute root. To record new digests (after a deliberate format change):
`python -m tests.pipeline.test_golden_shards --write`.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.shard import shard_dataset
from pipeline.shard.ffmpeg import find_ffmpeg

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "golden"
DIGESTS = FIXTURES / "digests.json"
RUNS = {  # name -> (source folder, shard_dataset keywords)
    "sthv1-jpeg-keep": ("sthv1", {"codec": "jpeg", "short_side": None, "shard_samples": 2}),
    "videos-vp9": ("videos", {"codec": "vp9", "short_side": 32, "shard_samples": 3}),
    "videos-jpeg": ("videos", {"codec": "jpeg", "short_side": 32, "shard_samples": 3}),
}
ENCODER_FREE = {"sthv1-jpeg-keep"}  # runs whose bytes no encoder decides


def ffmpeg_version() -> str:
    out = subprocess.run([find_ffmpeg(), "-version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0]


def output_digests(out: Path) -> dict[str, str]:
    """sha256 of every file a run wrote in `out`; the manifest without its run record and absolute root."""
    digests = {}
    for path in sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(".")):
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = json.loads(data)
            manifest.pop("run")
            manifest["source"]["root"] = "SRC"
            data = (json.dumps(manifest, ensure_ascii=False, indent=1) + "\n").encode()
        digests[path.name] = hashlib.sha256(data).hexdigest()
    return digests


def shard(name: str, out: Path) -> dict[str, str]:
    folder, keywords = RUNS[name]
    shard_dataset(FIXTURES / folder, out, workers=2, **keywords)
    return output_digests(out)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_the_shards_are_the_recorded_bytes(name, tmp_path):
    recorded = json.loads(DIGESTS.read_text())
    if name not in ENCODER_FREE and ffmpeg_version() != recorded["ffmpeg"]:
        pytest.skip(f"the digests were recorded with {recorded['ffmpeg']!r}; this ffmpeg is {ffmpeg_version()!r}")
    assert shard(name, tmp_path / name) == recorded["runs"][name]


def _write(folder: Path) -> None:
    runs = {name: shard(name, folder / name) for name in sorted(RUNS)}
    DIGESTS.write_text(json.dumps({"ffmpeg": ffmpeg_version(), "runs": runs}, indent=1) + "\n")
    print(f"wrote {DIGESTS}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.pipeline.test_golden_shards --write")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _write(Path(tmp))
