"""Shard reading at scale: bounded open files, the cached flat index, release of files."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.io.filepool import FilePool
from pipeline.format.discovery import locate_shards
from pipeline.format.sample_index import INDEX_DIR, load_index
from pipeline.format.shardset import ShardSet
from tests.clipdata import SMALL, coded_frames, make_shards

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """60 one-video shards: more than the descriptor limit the test below sets."""
    videos = {c: [(f"{c}{j}", coded_frames(12)) for j in range(20)] for c in ("a", "b", "c")}
    return make_shards(tmp_path_factory.mktemp("many"), videos, shard_samples=1, codec="jpeg")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def open_shards(folder: Path) -> list[str]:
    """The files under `folder` this process holds open."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(folder)) and target.endswith(".tar"):
            found.append(target)
    return found


def test_file_pool_keeps_at_most_max_open_files(tmp_path):
    paths = []
    for i in range(10):
        paths.append(tmp_path / f"f{i}")
        paths[-1].write_bytes(bytes([i]) * 100)
    pool = FilePool(paths, max_open=3)
    before = open_fds()
    for round_ in range(3):
        for i in range(10):
            assert pool.read(i, 10 + round_, 2) == bytes([i]) * 2
            assert pool.open_count <= 3 and open_fds() - before <= 3
    pool.close()
    assert open_fds() == before and pool.open_count == 0


def test_an_epoch_over_ten_times_more_shards_than_the_descriptor_limit(many, tmp_path):
    """400 shards (copies of the 60 above) under a soft limit of 40 descriptors: a whole epoch loads."""
    wide = tmp_path / "wide"
    wide.mkdir()
    (wide / "classes.json").write_bytes((many / "classes.json").read_bytes())
    tars = sorted(many.glob("*.tar"))
    for n in range(400):
        src = tars[n % len(tars)]
        os.link(src, wide / f"train-{n:06d}.tar")
        os.link(src.with_suffix(".idx"), wide / f"train-{n:06d}.idx")
    script = textwrap.dedent(f"""
        import resource, os
        from pipeline import ClipLoader
        from tests.clipdata import SMALL
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        with ClipLoader({str(wide)!r}, SMALL, batch_size=8, device="cpu", num_threads=1) as loader:
            n = sum(len(labels) for _, labels in loader)
            peak = loader.data.files.max_open
        print("CLIPS", n, "SHARDS", len(loader.data.tars), "MAX_OPEN", peak)
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert "CLIPS 400 SHARDS 400" in run.stdout, run.stdout + run.stderr[-3000:]
    assert "MAX_OPEN 5" in run.stdout  # an eighth of the lowered limit of 40


def test_index_is_cached_and_rebuilt_when_a_shard_changes(many, tmp_path):
    import shutil

    copy = tmp_path / "s"
    shutil.copytree(many, copy, ignore=shutil.ignore_patterns(INDEX_DIR))
    first = ShardSet.open(copy)
    caches = list((copy / INDEX_DIR).iterdir())
    assert len(caches) == 1 and not first.index.shard.flags.writeable  # a view of the memory-mapped cache
    again = load_index(first.tars, checksums=locate_shards(copy).checksums)
    assert [again.key(i) for i in range(len(again))] == [first.key(i) for i in range(len(first))]
    assert list((copy / INDEX_DIR).iterdir()) == caches  # reused, not rebuilt
    # Re-shard one member (here: rewrite a label) and update the manifest checksum: the cache key changes.
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["shards"][0]["sha256"] = "0" * 64
    (copy / "manifest.json").write_text(json.dumps(manifest))
    ShardSet.open(copy)
    assert len(list((copy / INDEX_DIR).iterdir())) == 2


def test_index_holds_tens_of_bytes_per_sample_besides_the_frame_table(many):
    data = ShardSet.open(many)
    per_sample = data.index.nbytes_per_sample
    frame_table = per_sample["frame_off"] + per_sample["frame_size"]
    assert sum(per_sample.values()) - frame_table - per_sample["key_bytes"] <= 64
    assert frame_table == 12 * 12  # an int64 offset and an int32 size per stored frame


def test_read_only_folder_caches_elsewhere(many, tmp_path, monkeypatch):
    import shutil

    copy = tmp_path / "ro"
    shutil.copytree(many, copy, ignore=shutil.ignore_patterns(INDEX_DIR))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(copy)) else real_access(p, mode))
    data = ShardSet.open(copy)
    assert not (copy / INDEX_DIR).exists() and any((tmp_path / "cache").rglob("meta.json"))
    assert len(data) == 60


def index_maps() -> set[str]:
    """This process's memory maps of sample-index files (one line each, with its address range)."""
    return {line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith("index.bin")}


def test_closed_loader_releases_its_files(many):
    from pipeline import ClipLoader

    before = index_maps()
    loader = ClipLoader(many, SMALL, batch_size=4, device="cpu", num_threads=1, max_open=8)
    mine = index_maps() - before  # other tests' loaders may still hold maps of their own
    assert mine  # the index is one memory map while the loader is open
    for _ in loader:
        # idle files are closed down to 8; a file a read-ahead thread is reading from stays open until it is done
        assert len(open_shards(many)) <= 8 + 2
    assert loader.data.files.open_count <= 8 and open_shards(many)
    loader.close()
    assert loader.data.files.open_count == 0 and not open_shards(many)
    assert not mine & index_maps()  # ... and is unmapped by close()
    assert len(loader) > 0  # the plan's size is still known
    with pytest.raises(ValueError, match="closed"):
        next(iter(loader))
    with ClipLoader(many, SMALL, batch_size=4, device="cpu", num_threads=1) as loader:
        next(iter(loader))
        assert open_shards(many)
    assert not open_shards(many)
