"""CLI: `python -m pipeline.shard SRC --out OUT` and `python -m pipeline.shard merge OUT_1 ... --out OUT`."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pipeline.cli import HelpFormatter
from pipeline.shard.ffmpeg import FFmpegError, parse_size
from pipeline.shard.layouts import LAYOUTS, LayoutError
from pipeline.shard.engines import ENGINES
from pipeline.shard.core import RejectedInputsError, ShardingError, shard_dataset, summary_table
from pipeline.shard.options import DEFAULT_MIN_FRAMES, DEFAULT_SHARD_SIZE, DEFAULT_TIMEOUT, ShardOptions

PROG = "python -m pipeline.shard"
_UNITS = {
    "": 1,
    "b": 1,
    "k": 10**3,
    "kb": 10**3,
    "m": 10**6,
    "mb": 10**6,
    "g": 10**9,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_bytes(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 2**29, '1e9' -> 10**9 (pure)."""
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"size must look like 1GB, 500MB, 512MiB or a byte count, got {text!r}")
    try:
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 1GB, 500MB or a byte count, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return int(value)


def _short_side(text: str) -> int | None:
    if text.lower() in ("keep", "none", "0"):
        return None
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Transcode a video dataset folder into WebDataset tar shards (VP9/WebM by default, or one "
        "JPEG per frame with --codec jpeg) with DALI index files, classes.json, manifest.json and rejected.jsonl. "
        "Re-running the same command resumes.",
        epilog=f"Joining the outputs of --part runs: {PROG} merge OUT_0 ... OUT_N-1 --out OUT "
        f"(see `{PROG} merge --help`).",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "src",
        help="dataset folder (class-per-folder, Kinetics CSV, Something-Something V1/V2), or its URL "
        "on object storage (s3://bucket/kinetics, gs://..., az://...): each input is then fetched by the "
        "worker that encodes it",
    )
    p.add_argument(
        "--out",
        required=True,
        help="output folder for shards and manifest, or a URL (s3://bucket/k400, gs://..., az://...): "
        "shards are then made in --work and uploaded one by one as they are finished",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="with a URL --out: local folder where shards are made before upload (default: one in "
        "~/.cache/tpn-toolkit/shard-work); keep it to resume after a crash",
    )
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="input layout; auto detects it from marker files")
    p.add_argument(
        "--annotations",
        type=Path,
        nargs="+",
        default=None,
        help="Kinetics CSV file(s) (default: CSVs with the Kinetics columns in SRC or SRC/annotations)",
    )
    p.add_argument(
        "--split",
        default=None,
        help="split of a class-per-folder SRC without split folders (train, val, test, or validation, "
        "testing, ...; default: SRC's own name when it is one, e.g. kinetics/test, else train)",
    )
    p.add_argument(
        "--classes",
        type=Path,
        default=None,
        help="classes.json to reuse (label order), e.g. from the train run when sharding val alone",
    )
    enc = p.add_argument_group("encoding")
    enc.add_argument(
        "--codec",
        choices=("vp9", "h264", "jpeg"),
        default="vp9",
        help="vp9 in WebM: the smallest shards, decoded by PyAV on a CPU and DALI on a GPU; h264 in "
        "MP4: PyAV on a CPU, NVDEC on a GPU; jpeg stores every frame as its own JPEG (frame shards: "
        "several times the bytes of vp9, but a clip decodes only its own frames, several times VP9's "
        "clips/s on a CPU; the README's Performance section has both measured)",
    )
    enc.add_argument(
        "--short-side",
        type=_short_side,
        default=256,
        help="resize so the short side is this (even; keeps aspect); 'keep' keeps the source size",
    )
    enc.add_argument(
        "--size", type=parse_size, default=None, help="fixed output size WxH (e.g. 320x240); overrides --short-side"
    )
    enc.add_argument("--fps", type=float, default=None, help="output frame rate (default: the source's)")
    enc.add_argument("--gop", type=int, default=16, help="keyframe every GOP frames (closed GOPs; video codecs)")
    enc.add_argument(
        "--quality",
        "--crf",
        dest="quality",
        type=int,
        default=None,
        help="quality, lower is better: the CRF for vp9 (default 32) and h264 (default 23); for jpeg "
        "ffmpeg's mjpeg quantiser scale -q:v, 2..31 (default 2: `python -m benchmarks.jpeg_quality` "
        "on camera-like content found no larger -q:v within 1 dB PSNR of it; 3 stores 26%% fewer "
        "bytes at -1.4 dB)",
    )
    enc.add_argument(
        "--threads",
        type=int,
        default=1,
        help="encoder threads per ffmpeg (part of the output bytes; parallelism comes from --workers)",
    )
    enc.add_argument("--min-frames", type=int, default=DEFAULT_MIN_FRAMES, help="reject videos with fewer frames")
    enc.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds before one ffmpeg run is killed")
    sh = p.add_argument_group("sharding")
    sh.add_argument(
        "--shard-size", type=parse_bytes, default=DEFAULT_SHARD_SIZE, help="maximum bytes per shard (1GB, 500MB, ...)"
    )
    sh.add_argument("--shard-samples", type=int, default=None, help="also cap the number of videos per shard")
    sh.add_argument(
        "--part", default=None, help="shard only part I of N (0-based, e.g. 0/4) for N machines; then merge"
    )
    sh.add_argument("--seed", type=int, default=0, help="seed of the fixed shuffle of videos into shards")
    sh.add_argument(
        "--workers",
        type=int,
        default=None,
        help="parallel ffmpeg processes (default: all cores; with --engine ray and no cluster, the CPUs "
        "of the local Ray started for the run)",
    )
    cl = p.add_argument_group("cluster")
    cl.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="where the encodes run: local threads, or the tasks of a Ray cluster (needs "
        "pip install -e '.[cluster]'); the shards are the same bytes either way",
    )
    cl.add_argument(
        "--ray-address",
        default=None,
        help="with --engine ray: the cluster's head, HOST:PORT as `ray start --head` printed it, or auto "
        "(default: $RAY_ADDRESS, else a local Ray started for the run)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="also reject imperfect inputs: those that decode only partly (far fewer frames than their "
        "container claims, e.g. cut downloads) and frame folders with a gap in their numbering (without "
        "--strict they are sharded, a gap's frames kept in order, and listed in warnings.jsonl), and exit "
        "non-zero if any input was rejected",
    )
    p.add_argument(
        "--append",
        action="store_true",
        help="OUT was made from fewer inputs: encode only those added since into new shards after its own, "
        "leaving every existing shard as it is (inputs removed or changed since, other settings, or a class "
        "list that would move existing labels are refused, with the reason)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace what OUT holds under the names this tool writes (shards of other inputs or settings, "
        "or another tool's files); files under other names are never touched",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def build_merge_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"{PROG} merge",
        description="Join the outputs of `--part I/N` runs into one folder: shards renumbered per split "
        "(hard links when possible, else copies), manifests, classes and rejections merged.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("parts", type=Path, nargs="+", help="output folders of the part runs")
    p.add_argument("--out", type=Path, required=True, help="merged output folder")
    p.add_argument("--copy", action="store_true", help="always copy shards instead of hard-linking them")
    p.add_argument("--allow-missing-parts", action="store_true", help="merge even if some of the N parts are absent")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def options_of(args: argparse.Namespace) -> ShardOptions:
    """The parsed command line as a `ShardOptions` (every flag but SRC, --out and --no-progress is a keyword)."""
    keywords = {k: v for k, v in vars(args).items() if k not in ("src", "out", "no_progress")}
    return ShardOptions.of(**keywords, progress=not args.no_progress)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["merge"]:
        return merge_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        report = shard_dataset(args.src, args.out, options_of(args))
    except RejectedInputsError as err:
        print(summary_table(err.report))
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 1
    except (ShardingError, LayoutError, FFmpegError, ValueError, OSError) as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted; finished shards are kept, run the same command again to resume", file=sys.stderr)
        return 130
    print(summary_table(report))
    if report.samples == 0:
        return _fail(f"no video was sharded; see {report.location('rejected.jsonl')}")
    return 0


def merge_main(argv: list[str]) -> int:
    from pipeline.shard.merge import merge_parts

    args = build_merge_parser().parse_args(argv)
    try:
        report = merge_parts(args.parts, args.out, copy=args.copy, allow_missing=args.allow_missing_parts)
    except (ShardingError, ValueError, OSError) as err:
        return _fail(str(err))
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
