"""Each input layout on a small generated fixture: detection, labels, splits, missing files."""

import json
import struct
from pathlib import Path

import pytest

from pipeline.shard.ffmpeg import pipe_frames, raw_rgb_input
from pipeline.shard.layouts import LayoutError, detect_layout, frames_pattern, scan
from pipeline.shard import shard_dataset
from pipeline.format.tar import iter_samples
from tests.shard_helpers import SMALL, noise_frames, rejected, write_video


def _samples(out: Path) -> list[dict]:
    m = json.loads((out / "manifest.json").read_text())
    return [
        {**json.loads(s["json"]), "split": e["split"], "lbl": struct.unpack("<i", s["lbl"])[0]}
        for e in m["shards"]
        for s in iter_samples(out / e["file"])
    ]


def _clip(path: Path, seed: int = 0, n: int = 12) -> Path:
    return write_video(path, noise_frames(n, 64, 48, seed))


# ---- class-per-folder --------------------------------------------------------


def test_folder_without_split_level_goes_to_the_named_split(tmp_path):
    for c in ("b_cls", "a_cls"):
        _clip(tmp_path / "src" / c / "x.mp4")
    (tmp_path / "src" / "a_cls" / "notes.txt").write_text("not a video, ignored")
    _clip(tmp_path / "src" / "a_cls" / ".cache" / "hidden.mp4")  # hidden folders are skipped
    assert detect_layout(tmp_path / "src") == "folder"
    with pytest.raises(LayoutError, match="split"):
        scan(tmp_path / "src", split="holdout")
    shard_dataset(tmp_path / "src", tmp_path / "out", **SMALL, split="validation")
    got = _samples(tmp_path / "out")
    assert sorted((s["split"], s["class"], s["lbl"]) for s in got) == [("val", "a_cls", 0), ("val", "b_cls", 1)]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar")) == ["val-000000.tar"]


def test_folder_with_validation_alias(tmp_path):
    _clip(tmp_path / "train" / "c1" / "a.mp4")
    _clip(tmp_path / "validation" / "c1" / "b.mp4")
    ds = scan(tmp_path)
    assert ds.layout == "folder" and sorted(i.split for i in ds.items) == ["train", "val"]


# ---- Kinetics CSV -------------------------------------------------------------


@pytest.fixture
def kinetics(tmp_path):
    src = tmp_path / "k400"
    (src / "annotations").mkdir(parents=True)
    (src / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        "abseiling,--aaa,0,10,train,0\n"
        '"air drumming",bbb,13,23,train,0\n'
        "abseiling,gone,5,15,train,0\n"
        "abseiling,--aaa,0,10,train,0\n"  # listed twice: sharded once
    )
    (src / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nair drumming,ccc,1,11,val\n"
    )
    (src / "annotations" / "test.csv").write_text("label,youtube_id,time_start,time_end,split\n,ddd,0,10,test\n")
    _clip(src / "train" / "abseiling" / "--aaa_000000_000010.mp4", 1)
    _clip(src / "train" / "air drumming" / "bbb_000013_000023.mp4", 2)
    _clip(src / "val" / "ccc_000001_000011.mp4", 3)
    return src


def test_kinetics_csv(kinetics, tmp_path):
    assert detect_layout(kinetics) == "kinetics"
    ds = scan(kinetics)
    assert ds.classes == ["abseiling", "air drumming"] and len(ds.items) == 4
    assert ds.notes and "ignored 2" in ds.notes[0]
    out = tmp_path / "out"
    report = shard_dataset(kinetics, out, **SMALL)
    got = {s["source"]: (s["split"], s["class"], s["lbl"]) for s in _samples(out)}
    assert got == {
        "train/abseiling/--aaa_000000_000010.mp4": ("train", "abseiling", 0),
        "train/air drumming/bbb_000013_000023.mp4": ("train", "air drumming", 1),
        "val/ccc_000001_000011.mp4": ("val", "air drumming", 1),
    }
    assert [(r["source"], r["reason"]) for r in rejected(out)] == [("gone_000005_000015.mp4", "missing_file")]
    assert report.manifest["rejected"]["by_reason"] == {"missing_file": 1}
    assert report.manifest["totals"]["inputs"] == 4


def test_val_with_classes_of_train(kinetics, tmp_path):
    """Sharding val alone with the train run's classes.json keeps the label indices."""
    (kinetics / "annotations" / "train.csv").unlink()
    out = tmp_path / "val_only"
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps(["abseiling", "air drumming", "zumba"]))
    shard_dataset(kinetics, out, **SMALL, classes=classes)
    assert [(s["class"], s["lbl"]) for s in _samples(out)] == [("air drumming", 1)]
    assert json.loads((out / "classes.json").read_text()) == ["abseiling", "air drumming", "zumba"]


# ---- Something-Something V2 ---------------------------------------------------


@pytest.fixture
def sthv2(tmp_path):
    src = tmp_path / "sthv2"
    (src / "labels").mkdir(parents=True)
    # The dataset's own indices (not alphabetical) must be kept.
    (src / "labels" / "something-something-v2-labels.json").write_text(
        json.dumps({"Putting something on something": "0", "Holding something": "1"})
    )
    (src / "labels" / "something-something-v2-train.json").write_text(
        json.dumps(
            [
                {"id": "11", "label": "holding a cup", "template": "Holding [something]", "placeholders": ["a cup"]},
                {
                    "id": "12",
                    "label": "putting a pen on a book",
                    "template": "Putting [something] on [something]",
                    "placeholders": ["a pen", "a book"],
                },
                {"id": "99", "label": "holding air", "template": "Holding [something]", "placeholders": ["air"]},
            ]
        )
    )
    (src / "labels" / "something-something-v2-validation.json").write_text(
        json.dumps(
            [
                {"id": "13", "label": "holding a mug", "template": "Holding [something]", "placeholders": ["a mug"]},
            ]
        )
    )
    videos = src / "20bn-something-something-v2"
    for i in ("11", "12", "13"):
        write_video(
            videos / f"{i}.webm",
            noise_frames(12, 64, 48, int(i)),
            vcodec="libvpx-vp9",
            extra=("-deadline", "realtime", "-cpu-used", "8"),
        )
    return src


def test_sthv2(sthv2, tmp_path):
    assert detect_layout(sthv2) == "sthv2"
    out = tmp_path / "out"
    shard_dataset(sthv2, out, **SMALL)
    assert json.loads((out / "classes.json").read_text()) == ["Putting something on something", "Holding something"]
    got = {s["source"]: (s["split"], s["lbl"]) for s in _samples(out)}
    assert got == {
        "20bn-something-something-v2/11.webm": ("train", 1),
        "20bn-something-something-v2/12.webm": ("train", 0),
        "20bn-something-something-v2/13.webm": ("val", 1),
    }
    assert [(r["source"], r["reason"]) for r in rejected(out)] == [
        ("20bn-something-something-v2/99.webm", "missing_file")
    ]


def test_sthv2_unknown_template_is_a_clear_error(sthv2):
    bad = sthv2 / "labels" / "something-something-v2-validation.json"
    bad.write_text(json.dumps([{"id": "13", "template": "Dancing with [something]"}]))
    with pytest.raises(LayoutError, match="Dancing with"):
        scan(sthv2)


# ---- Something-Something V1 ---------------------------------------------------


def _jpegs(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True)
    frames = noise_frames(n, 64, 48, seed)
    argv = [
        *raw_rgb_input(64, 48),
        "-start_number",
        "1",
        str(folder / "%05d.jpg"),
    ]
    pipe_frames(argv, [frames.tobytes()], timeout=60)


@pytest.fixture
def sthv1(tmp_path):
    src = tmp_path / "sthv1"
    src.mkdir()
    (src / "something-something-v1-labels.csv").write_text("Holding something\nPutting something on something\n")
    (src / "something-something-v1-train.csv").write_text("21;Putting something on something\n22;Holding something\n")
    (src / "something-something-v1-validation.csv").write_text("23;Holding something\n")
    frames = src / "20bn-something-something-v1"
    _jpegs(frames / "21", 12, 1)
    _jpegs(frames / "22", 10, 2)
    (frames / "23").mkdir()  # listed, but its frames were never extracted
    return src


def test_sthv1_frames_are_encoded_at_12_fps(sthv1, tmp_path):
    assert detect_layout(sthv1) == "sthv1"
    assert frames_pattern(sthv1 / "20bn-something-something-v1" / "21") == ("%05d.jpg", 1, 12)
    out = tmp_path / "out"
    shard_dataset(sthv1, out, **SMALL)
    got = {s["source"]: (s["split"], s["lbl"], s["frames"], s["fps"]) for s in _samples(out)}
    assert got == {
        "20bn-something-something-v1/21": ("train", 1, 12, 12.0),
        "20bn-something-something-v1/22": ("train", 0, 10, 12.0),
    }
    assert [(r["source"], r["reason"]) for r in rejected(out)] == [("20bn-something-something-v1/23", "missing_file")]


def test_layout_override_and_errors(sthv1, tmp_path):
    with pytest.raises(LayoutError, match="unknown layout"):
        scan(sthv1, layout="ucf101")
    with pytest.raises(LayoutError, match="Kinetics CSV"):
        scan(sthv1, layout="kinetics")
    with pytest.raises(LayoutError, match="not a directory"):
        scan(tmp_path / "missing")


def test_a_test_folder_is_a_split_and_unused_folders_are_reported(tmp_path):
    """SRC/{train,validation,test}/<class>/...: three splits by their usual names; a folder that is not a
    split is reported (manifest and summary), never silently dropped. SRC/test alone shards as test."""
    from pipeline.shard import shard_dataset
    from pipeline.shard.core import summary_table
    from tests.shard_helpers import noise_frames, write_video

    src = tmp_path / "src"
    for split in ("train", "validation", "test", "extras"):
        write_video(src / split / "a" / "v.mp4", noise_frames(8, 64, 48, 1))
    report = shard_dataset(src, tmp_path / "out", short_side=None, workers=1)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "out").glob("*.tar")) == ["test", "train", "val"]
    notes = report.manifest["source"]["notes"]
    assert any("extras" in n and "not used" in n for n in notes) and "not used" in summary_table(report)
    alone = shard_dataset(src / "test", tmp_path / "alone", short_side=None, workers=1)
    assert [p.name for p in (tmp_path / "alone").glob("*.tar")] == ["test-000000.tar"] and alone.samples == 1
    assert scan(src, split="testing").items  # the same names as --split everywhere


def test_split_names_mean_the_same_in_every_tool(tmp_path):
    from pipeline import resolve_split

    for split in ("train", "val", "test"):
        (tmp_path / f"{split}-000000.tar").write_bytes(b"")
    assert resolve_split(tmp_path, "validation") == "val" and resolve_split(tmp_path, "testing") == "test"
    assert resolve_split(tmp_path, "test") == "test"


# ---- every layout from object storage -----------------------------------------


@pytest.mark.parametrize("layout", ["kinetics", "sthv2", "sthv1"])
def test_every_layout_reads_from_object_storage(layout, request, s3, tmp_path):
    """The same shards from s3:// as from a local copy: annotations read by the driver, videos and frame
    folders fetched by the workers."""
    from tests.s3_helpers import BUCKET

    src = request.getfixturevalue(layout)
    prefix = f"{BUCKET}/layouts/{layout}-{tmp_path.name}"
    s3.put(str(src), prefix, recursive=True)
    local, remote = tmp_path / "local", tmp_path / "remote"
    shard_dataset(src, local, **SMALL)
    report = shard_dataset(f"s3://{prefix}", remote, **SMALL)
    assert report.manifest["source"]["layout"] == layout and report.samples > 0
    for path in sorted(local.iterdir()):
        if path.suffix in (".tar", ".idx") or path.name == "classes.json":
            assert (remote / path.name).read_bytes() == path.read_bytes(), path.name
    # object stores hold no empty folders: sthv1's never-extracted folder is absent there, rejected all the same
    assert [(r["source"], r["reason"]) for r in rejected(remote)] == [
        (r["source"], r["reason"]) for r in rejected(local)
    ]


# ---- annotations that are wrong say so -----------------------------------------


def test_a_kinetics_csv_without_a_column_is_an_error_naming_file_and_column(kinetics, tmp_path, capsys):
    """A train CSV that lost its time_end column used to fall back to class folders (one class named after the
    videos' folder, val merged into train) or, with --annotations, to a raw KeyError."""
    from pipeline.shard.__main__ import main

    train = kinetics / "annotations" / "train.csv"
    train.write_text("label,youtube_id,time_start,split\nabseiling,--aaa,0,train\n")
    with pytest.raises(LayoutError, match=r"train.csv looks like a Kinetics annotation CSV but has no time_end"):
        scan(kinetics)
    with pytest.raises(LayoutError, match=r"train.csv .*no time_end"):
        scan(kinetics, "kinetics", annotations=[train])
    assert main([str(kinetics), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert "time_end" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_kinetics_time_that_is_no_number_names_the_file_and_row(kinetics):
    (kinetics / "annotations" / "validate.csv").write_text(
        "label,youtube_id,time_start,time_end,split\nair drumming,ccc,1,11,val\nair drumming,eee,1O,20,val\n"
    )
    with pytest.raises(LayoutError, match=r"validate.csv, line 3: time_start '1O'"):
        scan(kinetics)


def test_sthv2_lists_that_do_not_parse_or_lack_a_key_are_errors_naming_the_file(sthv2):
    val = sthv2 / "labels" / "something-something-v2-validation.json"
    val.write_text('[{"id": "13", "template": "Holding [something]"},\n]')  # a trailing comma
    with pytest.raises(LayoutError, match=r"validation.json is not valid JSON: .* line 2, column 1"):
        scan(sthv2)
    val.write_text('[{"id": "13", "templat": "Holding [something]"}]')
    with pytest.raises(LayoutError, match=r"validation.json: entry 0 has no 'template' \(it has \['id', 'templat'\]\)"):
        scan(sthv2)


def test_sthv2_a_folder_named_like_a_video_is_named_as_such(sthv2, tmp_path):
    (sthv2 / "20bn-something-something-v2" / "99.webm").mkdir()
    shard_dataset(sthv2, tmp_path / "out", **SMALL)
    (r,) = rejected(tmp_path / "out")
    assert r["source"].endswith("99.webm") and r["reason"] == "unreadable" and "a folder, not a video" in r["message"]


def test_sthv1_labels_with_a_byte_order_mark_are_read(sthv1):
    labels = sthv1 / "something-something-v1-labels.csv"
    labels.write_bytes(b"\xef\xbb\xbf" + labels.read_bytes())
    assert scan(sthv1).classes == ["Holding something", "Putting something on something"]


@pytest.mark.parametrize("codec", ["vp9", "jpeg"])
def test_a_corrupt_frame_rejects_its_video_whatever_the_codec(sthv1, tmp_path, codec):
    """ffmpeg's MJPEG decoder conceals a corrupt frame (a neighbour repeated): with VP9 the video was sharded
    with no word of it. Every frame is decoded first, so both codecs give the same verdict."""
    bad = sthv1 / "20bn-something-something-v1" / "21" / "00005.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    shard_dataset(sthv1, tmp_path / codec, **SMALL, codec=codec)
    got = {r["source"]: (r["reason"], r["message"]) for r in rejected(tmp_path / codec)}
    reason, message = got["20bn-something-something-v1/21"]
    assert reason == "unreadable" and "frame 00005.jpg of 20bn-something-something-v1/21" in message


@pytest.mark.parametrize("codec", ["vp9", "jpeg"])
def test_a_gap_in_the_numbering_keeps_every_frame_in_order_and_is_named(sthv1, tmp_path, codec):
    """Frames 00004-00005 of 12 missing: the 10 there are sharded in order (ffmpeg's numbered input stopped at
    the gap, keeping 3), and warnings.jsonl names the gap; --strict rejects the video instead."""
    from pipeline.shard import RejectedInputsError

    folder = sthv1 / "20bn-something-something-v1" / "21"
    for n in (4, 5):
        (folder / f"{n:05d}.jpg").unlink()
    shard_dataset(sthv1, tmp_path / codec, **SMALL, codec=codec)
    sample = next(s for s in _samples(tmp_path / codec) if s["source"].endswith("/21"))
    assert sample["frames"] == 10
    (warning,) = [json.loads(line) for line in (tmp_path / codec / "warnings.jsonl").read_text().splitlines()]
    assert (
        warning["reason"] == "frame_gap"
        and warning["missing"] == "4-5"
        and "frames 4-5 are missing" in (warning["message"])
    )
    with pytest.raises(RejectedInputsError):
        shard_dataset(sthv1, tmp_path / f"{codec}-strict", **SMALL, codec=codec, strict=True)
    assert ("20bn-something-something-v1/21", "frame_gap") in {
        (r["source"], r["reason"]) for r in rejected(tmp_path / f"{codec}-strict")
    }
