"""`python -m tpn.test NAME --checkpoint CKPT --shards SHARDS`: the seed's test protocol.

Scores every video of the shards through the config's views and prints
Top-1, Top-5 and mean class accuracy next to the zoo's published Top-1
(`tpn.evaluate` has the protocol and the scoring). Runs under torchrun too.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

import tpn
from pipeline import ClipLoader, atomic_write_bytes, atomic_write_json
from pipeline.cli import add_split_arg
from tpn.checkpoint import read_checkpoint
from tpn.cli import add_checkpoint_arg, add_device_args
from tpn.distributed import DistEnv, env_from_environ, init_distributed, resolve_torch_device, shutdown
from tpn.evaluate import EvalReport, evaluate, protocol_spec, shard_source

log = logging.getLogger("tpn.test")


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tpn.test",
        description="Evaluate a zoo model on shards with the seed's test protocol "
        "(per-video mean of softmax probabilities over all views); prints Top-1, Top-5 "
        "and mean class accuracy next to the zoo's published Top-1. "
        "Runs under `torchrun --nproc-per-node N -m tpn.test ...` too (--device cuda is then each "
        "process's GPU, its LOCAL_RANK).",
    )
    p.add_argument("name", help="zoo model name (see `python -m tpn`)")
    add_checkpoint_arg(p, required=True)
    p.add_argument(
        "--shards", required=True, nargs="+", help="a shard directory (its --split shards) or .tar paths, read as given"
    )
    add_split_arg(p, of="a --shards folder")
    p.add_argument("--flip", action="store_true", help="add horizontally flipped views (doubles the views)")
    p.add_argument("--clips", type=int, help="temporal clips per video for dense sampling (default: the config's)")
    p.add_argument("--crops", choices=["three", "center", "full"], help="spatial views (default: the config's)")
    p.add_argument("--batch-size", type=int, default=1, help="videos per batch and process (default: 1)")
    p.add_argument("--max-clips", type=int, default=32, help="views per forward pass, to bound memory (default: 32)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: from the checkpoint, else the config)")
    add_device_args(p)  # --device, --loader-device, --decoder, --workers, as tpn.train has them
    p.add_argument("--amp", action="store_true", help="bf16 autocast on a GPU (default: fp32, as the seed)")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    p.add_argument("--per-video", type=Path, help="write per-video probabilities as JSONL here")
    return p


def run_test(args: argparse.Namespace, env: DistEnv) -> EvalReport:
    cfg = tpn.get_config(args.name)
    device = resolve_torch_device(args.device, env)
    init_distributed(device, env)
    ckpt = read_checkpoint(args.checkpoint)  # once: the class count and the weights come from the same dict
    num_classes = args.num_classes or tpn.checkpoint_classes(ckpt).num_classes or cfg.num_classes
    model = tpn.create_model(args.name, num_classes=num_classes)
    report = tpn.load_checkpoint(
        model, ckpt, source_name=args.checkpoint, other_architecture=args.allow_other_architecture
    )
    for note in report.notes:
        log.info(note)
    model.to(device)
    spec = protocol_spec(cfg.clip, flip=args.flip or None, clips=args.clips, crops=args.crops)
    source, split = shard_source(args.shards, args.split)
    loader = ClipLoader(
        source,
        spec,
        mode="test",
        batch_size=args.batch_size,
        device=args.loader_device,
        decoder=args.decoder,
        num_threads=args.workers,
        rank=env.rank,
        world_size=env.world_size,
        return_keys=True,
        split=split,
    )
    if env.is_main:
        log.info(
            "%s: %d views per video (%d clips), shards %s", args.name, spec.num_test_views, spec.num_test_clips, source
        )
    amp = torch.bfloat16 if args.amp and device.type == "cuda" else None
    return evaluate(
        model,
        loader,
        device=device,
        env=env,
        amp_dtype=amp,
        max_clips=args.max_clips,
        keep_scores=args.per_video is not None,
    )


def write_reports(report: EvalReport, args: argparse.Namespace) -> None:
    if args.out:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        atomic_write_json(args.out, {**report.to_dict(), "settings": settings})
    if args.per_video and report.scores is not None:
        lines = [
            json.dumps(
                {
                    "key": s.key,
                    "label": s.label,
                    "pred": max(range(len(s.probs)), key=s.probs.__getitem__),
                    "probs": s.probs,
                }
            )
            for s in report.scores
        ]
        atomic_write_bytes(args.per_video, ("\n".join(lines) + "\n").encode())


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    env = env_from_environ()
    try:
        report = run_test(args, env)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # bad names, paths, checkpoints, shards
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        shutdown()
    if env.is_main:
        print(report.table())
        write_reports(report, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
