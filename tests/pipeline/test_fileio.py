import json
import os
import stat

import pytest

from pipeline.io.files import atomic_write, atomic_write_json, atomic_write_text, is_temp_name, sha256_file, temp_path


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "a.json"
    atomic_write_json(target, {"b": "ü", "a": 1})
    atomic_write_json(target, {"c": 2})
    assert json.loads(target.read_text(encoding="utf-8")) == {"c": 2}
    assert [p.name for p in target.parent.iterdir()] == ["a.json"]


def test_failed_write_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def boom(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, boom)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_written_file_gets_a_normal_mode(tmp_path):
    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "m.txt", "x", durable=False)
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_temp_names_are_hidden_unique_and_recognised(tmp_path):
    final = tmp_path / "shard-000001.tar"
    a, b = temp_path(final), temp_path(final, ".png")
    assert a != b and a.parent == final.parent and b.suffix == ".png"
    assert is_temp_name(a.name) and is_temp_name(b.name)
    assert not is_temp_name(final.name) and not is_temp_name(".hidden")


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)
    (tmp_path / "x").write_bytes(data)
    assert sha256_file(tmp_path / "x", chunk=1 << 16) == hashlib.sha256(data).hexdigest()
