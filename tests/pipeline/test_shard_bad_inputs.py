"""Messy inputs: each bad file is listed with its reason, every good one is sharded."""

import json
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.shard.ffmpeg import EncodeSettings, output_geometry
from pipeline.shard import shard_dataset
from pipeline.shard.__main__ import main
from pipeline.format.tar import iter_samples
from tests.shard_helpers import (
    SMALL,
    noise_frames,
    rejected,
    shard_command,
    write_anamorphic,
    write_audio_only,
    write_video,
)

GOOD = {  # relative path -> source (W, H)
    "mixed/normal.mp4": (64, 48),
    "mixed/odd size.mkv": (63, 47),
    "mixed/portrait.mp4": (48, 96),
    "mixed/odd portrait.mkv": (35, 61),
    "mixed/vidéo été 1.mp4": (64, 48),
    "mixed/日本 クリップ.webm": (64, 48),
}
BAD = {
    "mixed/zero.mp4": "unreadable",
    "mixed/truncated.mp4": "unreadable",
    "mixed/text.mp4": "unreadable",
    "mixed/audio only.mp4": "no_video_stream",
    "mixed/one frame.mp4": "too_short",
}


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    src = tmp_path_factory.mktemp("messy")
    for k, (rel, (w, h)) in enumerate(GOOD.items()):
        path = src / rel
        if path.suffix == ".mkv":  # odd sizes: x264 4:2:0 cannot hold them, lossless FFV1 can
            write_video(path, noise_frames(12, w, h, k), vcodec="ffv1", pix_fmt="yuv444p")
        elif path.suffix == ".webm":
            write_video(path, noise_frames(12, w, h, k), vcodec="libvpx-vp9", extra=("-deadline", "realtime"))
        else:
            write_video(path, noise_frames(12, w, h, k))
    (src / "mixed/zero.mp4").write_bytes(b"")
    full = write_video(src / "mixed/truncated.mp4", noise_frames(40, 64, 48, 9)).read_bytes()
    (src / "mixed/truncated.mp4").write_bytes(full[: len(full) * 6 // 10])  # an interrupted download
    (src / "mixed/text.mp4").write_text("404 Not Found\n")
    write_audio_only(src / "mixed/audio only.mp4")
    write_video(src / "mixed/one frame.mp4", noise_frames(1, 64, 48))
    return src


@pytest.fixture(scope="module")
def messy_out(messy, tmp_path_factory):
    out = tmp_path_factory.mktemp("messy_out")
    report = shard_dataset(messy, out, **SMALL)
    return out, report


def test_bad_inputs_are_listed_with_reasons(messy_out):
    out, report = messy_out
    got = {r["source"]: r["reason"] for r in rejected(out)}
    assert got == BAD
    for r in rejected(out):
        assert set(r) == {"source", "reason", "message", "split"} and r["message"]
    assert report.manifest["rejected"]["by_reason"] == {"no_video_stream": 1, "too_short": 1, "unreadable": 3}


def test_every_good_input_is_sharded_with_even_sizes(messy_out):
    out, report = messy_out
    m = json.loads((out / "manifest.json").read_text())
    samples = [json.loads(s["json"]) for e in m["shards"] for s in iter_samples(out / e["file"])]
    assert sorted(s["source"] for s in samples) == sorted(GOOD)
    settings = EncodeSettings(short_side=SMALL["short_side"])
    for s in samples:
        assert (s["width"], s["height"]) == output_geometry(*GOOD[s["source"]], settings)
        assert s["width"] % 2 == 0 and s["height"] % 2 == 0 and min(s["width"], s["height"]) == 48
        assert s["frames"] == 12 and "." not in s["key"] and s["key"].isascii()
    assert report.samples == len(GOOD) and report.inputs == len(GOOD) + len(BAD)


def test_cli_exit_codes(messy, tmp_path, capsys):
    args = [str(messy), "--out", str(tmp_path / "o"), "--short-side", "48", "--no-progress"]
    assert main(args) == 0  # some rejected, but videos were sharded
    text = capsys.readouterr().out
    assert "rejected 5" in text and "6 of 11 inputs sharded" in text
    assert main([*args, "--strict"]) == 1  # resumes (nothing to redo) and reports the rejections
    assert "strict" in capsys.readouterr().err


def test_timeout_and_nothing_sharded(tmp_path, capsys):
    write_video(tmp_path / "src" / "c" / "slow.mp4", noise_frames(12, 64, 48))
    assert main([str(tmp_path / "src"), "--out", str(tmp_path / "o"), "--timeout", "0.001", "--no-progress"]) != 0
    assert "no video was sharded" in capsys.readouterr().err
    [r] = rejected(tmp_path / "o")
    assert r["reason"] == "timeout" and "0.001" in r["message"]


def test_min_frames(messy, tmp_path):
    report = shard_dataset(messy, tmp_path / "o", **{**SMALL, "min_frames": 13})
    assert report.samples == 0
    assert {r["reason"] for r in report.rejected} >= {"too_short"}
    assert sum(r["reason"] == "too_short" for r in report.rejected) == len(GOOD) + 1


def test_frames_record_is_int32(messy_out):
    out, _ = messy_out
    m = json.loads((out / "manifest.json").read_text())
    s = next(iter_samples(out / m["shards"][0]["file"]))
    assert len(s["frames"]) == 4 and struct.unpack("<i", s["frames"])[0] == json.loads(s["json"])["frames"]
    assert len(s["lbl"]) == 4


def test_partly_decodable_input_is_sharded_with_a_warning_or_rejected_in_strict_mode(tmp_path):
    """A download cut mid-way: the container (moov first) claims 40 frames, about half decode."""
    from pipeline.shard import RejectedInputsError
    from pipeline.shard.verify import main as verify_main

    src = tmp_path / "src"
    full = write_video(src / "a" / "cut.mp4", noise_frames(40, 64, 48), extra=("-movflags", "+faststart", "-g", "4"))
    full.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    write_video(src / "a" / "whole.mp4", noise_frames(12, 64, 48, seed=1))
    report = shard_dataset(src, tmp_path / "out", **SMALL)
    assert report.samples == 2 and not report.rejected
    (warning,) = [json.loads(line) for line in (tmp_path / "out" / "warnings.jsonl").read_text().splitlines()]
    assert warning["source"] == "a/cut.mp4" and warning["claimed_frames"] == 40
    assert 8 <= warning["decoded_frames"] < 36
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["warnings"]["count"] == 1
    assert verify_main([str(tmp_path / "out"), "--no-progress"]) == 0
    with pytest.raises(RejectedInputsError):
        shard_dataset(src, tmp_path / "strict", **SMALL, strict=True)
    assert [r["reason"] for r in rejected(tmp_path / "strict")] == ["partly_decodable"]
    assert (tmp_path / "strict" / "warnings.jsonl").read_text() == ""


def test_an_encoder_killed_by_a_signal_is_retried_never_rejected(tmp_path, monkeypatch):
    """ffmpeg dying of a signal (an interrupted run, the OOM killer) says so, records nothing, and a
    rerun encodes the input: it never becomes a permanent 'ffmpeg_error' rejection."""
    from pipeline.shard.ffmpeg import EncoderInterrupted, find_ffmpeg

    src = tmp_path / "src"
    for k in range(3):
        write_video(src / "a" / f"v{k}.mp4", noise_frames(12, 64, 48, k))
    real = find_ffmpeg()
    fake = tmp_path / "ffmpeg"  # answers probes like ffmpeg, dies of SIGKILL when asked to encode v1
    fake.write_text(f'#!/bin/sh\ncase "$*" in *v1.mp4*) kill -9 $$;; esac\nexec "{real}" "$@"\n')
    fake.chmod(0o755)
    find_ffmpeg.cache_clear()
    monkeypatch.setenv("TPN_FFMPEG", str(fake))
    try:
        with pytest.raises(EncoderInterrupted, match="signal 9.*rerun the same command"):
            shard_dataset(src, tmp_path / "out", short_side=None, workers=1)
    finally:
        monkeypatch.delenv("TPN_FFMPEG")
        find_ffmpeg.cache_clear()
    report = shard_dataset(src, tmp_path / "out", short_side=None, workers=1)  # the same command, resumed
    assert report.samples == 3 and rejected(tmp_path / "out") == []


def test_non_square_pixels_are_sharded_at_the_display_aspect_ratio(tmp_path):
    """176x144 stored with 128:117 pixels is shown 4:3-ish (192x144): the shards keep that shape, and the
    sample's .json records the source's SAR."""
    from pipeline.display import Display, source_display
    from pipeline.shard.ffmpeg import output_geometry

    src = tmp_path / "src" / "a" / "qcif.mp4"
    write_anamorphic(src, seconds=1)
    shard_dataset(src.parent.parent, tmp_path / "out", workers=1)  # short side 256
    (sample,) = list(iter_samples(sorted((tmp_path / "out").glob("*.tar"))[0]))
    meta = json.loads(sample["json"])
    display = source_display(src)  # x264 stores 128:117 as the equal 93:85 (reduced to its own limits)
    sar = display.sar
    assert sar is not None and abs(sar[0] / sar[1] - 128 / 117) < 1e-3 and meta["sar"] == f"{sar[0]}:{sar[1]}"
    assert display.rotation == 0 and "rotation" not in meta and display.size(176, 144) == (192, 144)
    assert (meta["width"], meta["height"]) == output_geometry(176, 144, EncodeSettings(), display) == (342, 256)
    square = output_geometry(176, 144, EncodeSettings(), Display())
    assert square == (312, 256)  # what it was sharded to before: 9% too narrow


@pytest.mark.parametrize("rotation, sar", [(90, "128/117"), (-90, "128/117"), (90, "1/1"), (180, "128/117")])
def test_a_phone_video_is_sharded_upright_its_pixels_stretched_before_the_turn(tmp_path, rotation, sar):
    """A display rotation turns the stored frames upright; the SAR belongs to the stored frame, so after a
    quarter turn it stretches the height (176 x 128/117 = 192.6 -> 192: a 144x192 picture, 0.75 wide)."""
    from pipeline.display import source_display
    from pipeline.shard.ffmpeg import output_geometry

    src = write_anamorphic(tmp_path / "src" / "a" / "phone.mp4", seconds=0.6, sar=sar, rotation=rotation)
    display = source_display(src)
    assert display.rotation == rotation % 360
    shard_dataset(src.parent.parent, tmp_path / "out", workers=1, short_side=None)
    (sample,) = list(iter_samples(sorted((tmp_path / "out").glob("*.tar"))[0]))
    meta = json.loads(sample["json"])
    shown = {(90, "128/117"): (144, 192), (90, "1/1"): (144, 176), (180, "128/117"): (192, 144)}[(abs(rotation), sar)]
    assert (meta["width"], meta["height"]) == output_geometry(176, 144, EncodeSettings(short_side=None), display)
    assert (meta["width"], meta["height"]) == shown and meta["rotation"] == rotation % 360


@pytest.mark.parametrize(
    "returncode, stderr, signum",
    [
        (-9, "", 9),  # died of SIGKILL
        (255, "[out#0/webm] ...\nExiting normally, received signal 2.\n", 2),  # caught Ctrl-C
        (255, "Exiting normally, received signal 15.", 15),  # caught SIGTERM
        (123, "Received > 3 system signals, hard exiting.", 0),
        (255, "Error opening output file: Operation not permitted", None),  # AVERROR(EPERM) is 255 too
        (1, "received signal 2 in the file name", None),
        (0, "", None),
    ],
)
def test_the_signal_that_stopped_ffmpeg(returncode, stderr, signum):
    from pipeline.shard.ffmpeg import stopping_signal

    assert stopping_signal(returncode, stderr) == signum


def _slow_once_ffmpeg(folder, name: str, pid_file) -> dict:
    """An `ffmpeg` that reads `name` at its native rate the first time (so a signal finds it busy), writing its
    pid to `pid_file` first; everything else is the real ffmpeg. Returns the environment that selects it."""
    from pipeline.shard.ffmpeg import find_ffmpeg

    real = find_ffmpeg()
    fake = folder / "ffmpeg"
    fake.write_text(
        f'#!/bin/sh\ncase "$*" in *{name}*) if [ ! -e "{pid_file}" ]; then echo $$ > "{pid_file}"; '
        f'exec "{real}" -re "$@"; fi;; esac\nexec "{real}" "$@"\n'
    )
    fake.chmod(0o755)
    return {**os.environ, "TPN_FFMPEG": str(fake)}


def _signal_group_when_busy(cmd, env, pid_file, cwd, ignore_sigint: bool = False) -> int:
    """Run `cmd` in a process group of its own, send SIGINT to the whole group (as a terminal's Ctrl-C does)
    once the slow ffmpeg is running, and return the command's exit status."""

    def child_setup():
        if ignore_sigint:  # what a shell does for a background job
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    proc = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True, preexec_fn=child_setup,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 120
    while not pid_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pid_file.exists(), proc.communicate()[1].decode()
    time.sleep(0.5)  # ffmpeg is reading its input by now, its signal handlers installed
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    return proc.returncode


@pytest.mark.parametrize("codec", ["vp9", "jpeg"])
def test_ctrl_c_while_sharding_loses_no_video(tmp_path, codec):
    """Ctrl-C reaches ffmpeg too, which exits on its own after catching it: the input it was encoding is not
    rejected, and the rerun shards every video."""
    src = tmp_path / "src"
    for k in range(4):
        write_video(src / "a" / f"v{k}.mp4", noise_frames(100, 64, 48, k))  # 4 s each at 25 fps
    out, pid_file = tmp_path / "out", tmp_path / "ffmpeg.pid"
    cmd = shard_command(src, out, "--codec", codec, "--workers", "2")
    env = _slow_once_ffmpeg(tmp_path, "v1.mp4", pid_file)
    assert _signal_group_when_busy(cmd, env, pid_file, cwd=Path.cwd()) == 130
    assert not (out / "manifest.json").exists()
    assert main([str(src), "--out", str(out), "--short-side", "48", "--shard-samples", "2", "--codec", codec,
                 "--no-progress"]) == 0  # fmt: skip
    assert rejected(out) == []
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 4


def test_a_background_run_goes_on_when_its_group_gets_ctrl_c(tmp_path):
    """A background job ignores SIGINT, but ffmpeg installs its own handler and exits: the run encodes that
    input again and finishes with every video, none rejected."""
    src = tmp_path / "src"
    for k in range(3):
        write_video(src / "a" / f"v{k}.mp4", noise_frames(100, 64, 48, k))
    out, pid_file = tmp_path / "out", tmp_path / "ffmpeg.pid"
    cmd = shard_command(src, out, "--workers", "2")
    env = _slow_once_ffmpeg(tmp_path, "v1.mp4", pid_file)
    assert _signal_group_when_busy(cmd, env, pid_file, cwd=Path.cwd(), ignore_sigint=True) == 0
    assert rejected(out) == []
    assert json.loads((out / "manifest.json").read_text())["totals"]["samples"] == 3
