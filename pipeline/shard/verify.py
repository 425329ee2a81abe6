"""The checks of `python -m pipeline.verify OUT`: re-read a shard folder and report every problem.

Checks, per shard: present, byte size and sha256 as the manifest says, `.idx`
equal to the index of the tar as it is; per sample: all components present
(video shards: video, lbl, frames, json; frame shards: lbl, frames, json and
one `NNNNNN.jpg` per frame), the json consistent with lbl, frames, the class
list and the video's (or frames') sha256; and (unless `--no-decode`) the
video decodes to exactly its recorded frame count, or every JPEG frame
decodes (a bad frame is named by shard, key and frame index). Exit status 1 if anything is
wrong, with one line per problem naming the shard and sample.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tarfile
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.cli import HelpFormatter
from pipeline.shard.ffmpeg import count_decoded_frames
from pipeline.io import storage
from pipeline.format.jpeg import decode_check
from pipeline.format.members import REQUIRED, frame_exts, frames_sha256, parse_int32
from pipeline.shard import manifest as mf
from pipeline.io.files import sha256_file
from pipeline.format.tar import index_of_tar, iter_samples


@dataclass
class VerifyReport:
    out: Path | str  # a folder or the URL of one
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # imperfect sources, from warnings.jsonl
    shards: int = 0
    samples: int = 0
    decoded: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def content_sha256(sample: dict, video_ext: str | None, frames: int) -> str:
    """sha256 of a sample's video, or of its JPEG frames concatenated in order (frame shards)."""
    if video_ext is not None:
        return hashlib.sha256(sample[video_ext]).hexdigest()
    return frames_sha256([sample[ext] for ext in frame_exts(frames)])


def check_sample(sample: dict, classes: list[str], video_ext: str | None, codec: str) -> list[str]:
    """Problems of one sample dict ({'__key__', ext: bytes}) (pure); `video_ext` None for frame shards."""
    key = sample["__key__"]
    try:
        frames = parse_int32(sample.get("frames", b""))
    except ValueError as err:
        frames = -1
        if "frames" in sample:
            return [f"{key}: unreadable .frames ({err})"]
    expected = set(REQUIRED) | ({video_ext} if video_ext else set(frame_exts(max(frames, 0))))
    present = set(sample) - {"__key__"}
    problems = [f"{key}: missing component .{c}" for c in sorted(expected - present)[:8]]
    problems += [f"{key}: unexpected component .{c}" for c in sorted(present - expected)[:8]]
    if problems:
        return problems
    try:
        meta = json.loads(sample["json"])
        label = parse_int32(sample["lbl"])
    except ValueError as err:
        return [f"{key}: unreadable json/lbl ({err})"]
    checks = [
        (meta.get("key") == key, f"json key {meta.get('key')!r} != sample key"),
        (meta.get("label") == label, f"json label {meta.get('label')} != .lbl {label}"),
        (meta.get("frames") == frames, f"json frames {meta.get('frames')} != .frames {frames}"),
        (0 <= label < len(classes), f"label {label} outside the {len(classes)} classes"),
        (
            0 <= label < len(classes) and meta.get("class") == classes[label],
            f"json class {meta.get('class')!r} is not classes[{label}]",
        ),
        (meta.get("codec") == codec, f"json codec {meta.get('codec')!r} != manifest codec {codec!r}"),
        (
            content_sha256(sample, video_ext, frames) == meta.get("sha256"),
            f"{'video' if video_ext else 'frames'} sha256 differs from its json",
        ),
        (frames >= 1, f"frame count {frames} < 1"),
    ]
    return [f"{key}: {msg}" for ok, msg in checks if not ok]


def _json_or_none(sample: dict) -> dict | None:
    try:
        meta = json.loads(sample.get("json", b""))
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


def _check_shard_file(out: Path, entry: dict) -> list[str]:
    tar, idx = out / entry["file"], out / entry["index"]
    if not tar.is_file():
        return [f"{entry['file']}: missing"]
    problems = []
    size = tar.stat().st_size
    if size != entry["bytes"]:
        problems.append(f"{entry['file']}: size {size} != manifest {entry['bytes']}")
    if sha256_file(tar) != entry["sha256"]:
        problems.append(f"{entry['file']}: sha256 differs from the manifest (file changed or corrupt)")
    if not idx.is_file():
        problems.append(f"{entry['index']}: missing")
    else:
        try:
            if idx.read_text() != index_of_tar(tar):
                problems.append(f"{entry['index']}: does not match the offsets in {entry['file']}")
        except (tarfile.TarError, OSError) as err:
            problems.append(f"{entry['file']}: not a readable tar ({err})")
    return problems


def _check_shard(
    out: Path, entry: dict, ctx: dict, pool: ThreadPoolExecutor | None, report: VerifyReport, per_class: Counter
) -> None:
    name = entry["file"]
    problems = _check_shard_file(out, entry)
    report.problems += problems
    if any(p.endswith(": missing") and p.startswith(name) for p in problems):
        return
    count, jobs = 0, []
    try:
        for sample in iter_samples(out / name):
            count += 1
            key = sample["__key__"]
            if key in ctx["keys"]:
                report.problems.append(f"{name}: {key}: key also in {ctx['keys'][key]}")
            ctx["keys"][key] = name
            sample_problems = check_sample(sample, ctx["classes"], ctx["ext"], ctx["codec"])
            report.problems += [f"{name}: {p}" for p in sample_problems]
            meta = _json_or_none(sample)
            if meta is not None:
                per_class[(entry["split"], meta.get("class"))] += 1
            if meta is not None and pool is not None:  # decode even after a checksum problem: name the frame
                jobs += _decode_jobs(pool, sample, meta.get("frames"), ctx["ext"])
    except (tarfile.TarError, OSError) as err:
        report.problems.append(f"{name}: cannot read samples ({err})")
    if count != entry["samples"]:
        report.problems.append(f"{name}: {count} samples, manifest says {entry['samples']}")
    report.samples += count
    for key, frame, frames, job in jobs:
        try:
            got = job.result()
        except Exception as err:  # any decoder failure is a finding, not a crash
            what = "video" if frame is None else f"frame {frame}"
            report.problems.append(f"{name}: {key}: {what} does not decode ({err})")
            continue
        if frame is None or frame == frames - 1:
            report.decoded += 1
        if frame is None and got != frames:
            report.problems.append(f"{name}: {key}: decodes to {got} frames, recorded {frames}")


def _decode_jobs(pool: ThreadPoolExecutor, sample: dict, frames: int, video_ext: str | None) -> list[tuple]:
    """(key, frame or None, frame count, future) for the decodes of one sample: its video, or every frame."""
    key = sample["__key__"]
    if not isinstance(frames, int) or frames < 1:
        return []
    if video_ext is not None:
        return (
            [(key, None, frames, pool.submit(count_decoded_frames, sample[video_ext]))] if video_ext in sample else []
        )
    return [
        (key, i, frames, pool.submit(decode_check, sample[ext]))
        for i, ext in enumerate(frame_exts(frames))
        if ext in sample
    ]


def verify_dataset(
    out: str | Path, *, decode: bool = True, workers: int | None = None, progress: bool = False
) -> VerifyReport:
    """Check every shard in `out` (a folder or a URL) against its manifest; the report lists each problem found.

    Shards on object storage are fetched one at a time into a temporary folder,
    checked like local ones and deleted.
    """
    if not storage.is_remote(out):
        if Path(out).exists() and not Path(out).is_dir():
            raise NotADirectoryError(
                f"{out} is a file, not a shard folder: pass the folder `python -m pipeline.shard` "
                "wrote (it holds manifest.json)"
            )
        return _verify(Path(out), decode, workers, progress)
    with tempfile.TemporaryDirectory(prefix="tpn-verify-") as tmp:
        local = Path(tmp)
        for name in (mf.MANIFEST, mf.CLASSES, mf.WARNINGS):
            storage.download(str(storage.join(out, name)), local / name)
        if not (local / mf.MANIFEST).is_file():
            raise FileNotFoundError(
                f"{storage.join(out, mf.MANIFEST)} not found: is {out} a folder written by `python -m pipeline.shard`?"
            )
        report = _verify(local, decode, workers, progress, remote=str(out))
    report.out = out
    return report


def _verify(out: Path, decode: bool, workers: int | None, progress: bool, remote: str | None = None) -> VerifyReport:
    from tqdm import tqdm

    manifest = mf.read_manifest(out)
    report = VerifyReport(out)
    try:
        classes = mf.read_class_file(out / mf.CLASSES)
    except ValueError as err:
        report.problems.append(str(err))
        return report
    if len(classes) != manifest["classes"]["count"]:
        report.problems.append(f"{mf.CLASSES}: {len(classes)} classes, manifest says {manifest['classes']['count']}")
    listed = {s["file"] for s in manifest["shards"]} | {s["index"] for s in manifest["shards"]}
    present = storage.list_names(remote) if remote else [p.name for p in sorted(out.iterdir())]
    report.problems += [
        f"{name}: on disk but not in the manifest" for name in present if mf.SHARD_RE.match(name) and name not in listed
    ]
    settings = manifest["settings"]
    is_frames = settings["codec"] == "jpeg"
    ctx = {
        "classes": classes,
        "ext": None if is_frames else settings["container"],
        "codec": settings["codec"],
        "keys": {},
    }
    per_class: Counter = Counter()
    pool = ThreadPoolExecutor(max_workers=workers or 2) if decode else None
    try:
        for entry in tqdm(manifest["shards"], unit="shard", disable=not progress, desc="verify"):
            if remote:  # one shard at a time in the temporary folder
                for name in (entry["file"], entry["index"]):
                    storage.download(str(storage.join(remote, name)), out / name)
            _check_shard(out, entry, ctx, pool, report, per_class)
            report.shards += 1
            if remote:
                for name in (entry["file"], entry["index"]):
                    (out / name).unlink(missing_ok=True)
    finally:
        if pool is not None:
            pool.shutdown()
    report.problems += _check_counts(manifest, per_class)
    report.warnings = _sharding_warnings(out)
    return report


def _sharding_warnings(out: Path) -> list[str]:
    """What pipeline.shard recorded of imperfect sources, in its words (the sources are not re-read here)."""
    path = out / mf.WARNINGS
    if not path.is_file():
        return []
    return [r["message"] for r in mf.read_jsonl(path.read_bytes())]


def _check_counts(manifest: dict, per_class: Counter) -> list[str]:
    problems = []
    for split, summary in manifest["splits"].items():
        found = {c: n for (s, c), n in per_class.items() if s == split}
        if found != summary["per_class"]:
            problems.append(f"manifest: per-class counts of split {split} do not match the shards")
    return problems


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipeline.verify",
        description="Re-read every shard written by `python -m pipeline.shard`: sizes and sha256 against "
        "manifest.json, .idx files, complete and consistent samples, and (by default) a full decode of every "
        "video checked against its recorded frame count. Exits 1 naming each problem.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "out", help="shard folder (holds manifest.json), or its URL (s3://bucket/k400, gs://..., https://...)"
    )
    p.add_argument("--no-decode", action="store_true", help="skip decoding the videos (checksums and structure only)")
    p.add_argument("--workers", type=int, default=None, help="decoding threads (default: 2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = verify_dataset(
            args.out, decode=not args.no_decode, workers=args.workers, progress=not args.no_progress
        )
    except (OSError, ValueError, KeyError) as err:
        print(f"pipeline.verify: error: {err}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(f"PROBLEM {problem}")
    for warning in report.warnings:
        print(f"WARNING {warning}")
    status = "OK" if report.ok else f"FAILED with {len(report.problems)} problem(s)"
    partly = f", {len(report.warnings)} from imperfect sources (warnings.jsonl)" if report.warnings else ""
    print(
        f"{status}: {report.shards} shard(s), {report.samples} sample(s){partly}, {report.decoded} decoded, "
        f"in {report.out}"
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
