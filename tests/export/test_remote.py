"""The Top-1 gate on shards in object storage (a local S3 server on loopback): the marker binds the URL's data."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

from export.errors import ExportError  # noqa: E402
from export.marker import check_marker  # noqa: E402
from export.onnx import export_onnx  # noqa: E402
from export.shards import validation_split, shard_fingerprint  # noqa: E402
from export.validate import Thresholds, validate  # noqa: E402
from tests.export_helpers import TINY, make_val_shards, trained_tiny  # noqa: E402
from tests.s3_helpers import BUCKET, upload  # noqa: E402


@pytest.mark.slow
def test_gate_on_object_storage_binds_the_remote_data(s3, tmp_path):
    local = make_val_shards(tmp_path)
    ckpt = trained_tiny(tmp_path, local)
    url = upload(s3, local, "val-shards")
    art = export_onnx(TINY, checkpoint=ckpt, out_dir=tmp_path / "out", size="test", parity_batches=(2,)).path
    assert validation_split(url, "val") == "val"
    with pytest.raises(ExportError, match="splits present: val"):
        validation_split(url, "test")
    assert (
        shard_fingerprint(url, "val").sha256 == shard_fingerprint(local, "val").sha256
    )  # the same data, wherever it is
    r = validate(art, model_name=TINY, checkpoint=ckpt, val_shards=url, thresholds=Thresholds(min_videos=8))
    assert r.passed and r.shards["location"] == url and r.videos == 8
    assert check_marker(art).valid  # re-checked against the bucket
    classes = json.loads((local / "classes.json").read_text())
    s3.pipe_file(f"{BUCKET}/val-shards/classes.json", json.dumps(classes[::-1]).encode())
    check = check_marker(art)
    assert not check.valid and "validation data changed" in check.problems[0]
