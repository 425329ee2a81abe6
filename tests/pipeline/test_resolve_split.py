"""`pipeline.resolve_split`: which split of a shard folder a tool reads, and what it says when it is not there."""

from pathlib import Path

import pytest

from pipeline import ShardReadError, resolve_split


@pytest.fixture
def folder(tmp_path) -> Path:
    for name in ("train-000000.tar", "train-000001.tar", "test-000000.tar"):
        (tmp_path / name).touch()  # resolve_split looks only at the names
    return tmp_path


@pytest.mark.parametrize(
    "split, expected", [("train", "train"), ("test", "test"), ("all", None), (None, None), ("", None)]
)
def test_a_present_split_or_all(folder, split, expected):
    assert resolve_split(folder, split) == expected


def test_a_missing_split_lists_those_present_and_names_the_flag(folder):
    with pytest.raises(
        ShardReadError,
        match=r"no 'val' split.*splits present: test, train\. Pass --split with one "
        r"of them \(or --split all for every shard\)",
    ):
        resolve_split(folder, "val")
    # a tool whose flag has another name (tpn.train's --val-split) is named as such
    with pytest.raises(ShardReadError, match=r"Pass --val-split with one of them \(or --val-split all ") as e:
        resolve_split(folder, "val", flag="--val-split")
    assert "--split " not in str(e.value)


def test_not_a_shard_folder(tmp_path):
    with pytest.raises(ShardReadError, match="not a shard folder"):
        resolve_split(tmp_path / "nope", "val")
    with pytest.raises(ShardReadError, match="no <split>-NNNNNN.tar shards"):
        resolve_split(tmp_path, "val")
