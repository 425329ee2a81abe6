"""The parts of a training run, built from its settings: loaders, model, precision and layout, the step's net.

`tpn.trainer.Trainer` calls these once, in order, before its loop starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import tpn
from pipeline import ClipLoader
from tpn.distributed import DistEnv
from tpn.engine import LossModule, StepOptions, cudnn_problem
from tpn.layers import set_batchnorm_impl
from tpn.evaluate import shard_source
from tpn.train_settings import TrainSettings, val_clip_spec

log = logging.getLogger("tpn.train")

LoaderFactory = Callable[..., Any]  # pipeline.ClipLoader's signature


def default_loader_factory() -> LoaderFactory:
    return ClipLoader


def build_loader(make_loader: LoaderFactory, s: TrainSettings, env: DistEnv, which: str):
    """The "train" loader (shuffled, augmented) or the "val" one (test mode, the views of --val-views)."""
    clip = tpn.get_config(s.model).clip
    paths, split = (s.train, s.train_split) if which == "train" else (s.val, s.val_split)
    source, split = shard_source(paths, split, flag=f"--{which}-split")
    kwargs: dict[str, Any] = dict(
        batch_size=s.batch_size,
        device=s.loader_device,
        decoder=s.decoder,
        seed=s.seed,
        num_threads=s.workers,
        rank=env.rank,
        world_size=env.world_size,
        split=split,
    )
    if which == "train":
        return make_loader(source, clip, mode="train", **kwargs)
    return make_loader(source, val_clip_spec(clip, s.val_views), mode="test", return_keys=True, **kwargs)


def build_train_model(
    s: TrainSettings, num_classes: int, device: torch.device, channels_last: bool, *, initialise: bool, is_main: bool
) -> nn.Module:
    """The zoo model for the shards' classes, its BatchNorm3d impl from --bn-impl; --pretrained/--checkpoint
    when `initialise` (not when resuming)."""
    cfg = tpn.get_config(s.model)
    if num_classes != cfg.num_classes and is_main:
        log.info(
            "%s: %d classes in the shards (the config has %d): building the classifier for %d",
            s.model,
            num_classes,
            cfg.num_classes,
            num_classes,
        )
    extra = {} if s.dropout is None else {"dropout": s.dropout}
    model = set_batchnorm_impl(tpn.create_model(s.model, num_classes=num_classes, **extra), s.bn_impl)
    if initialise and s.pretrained:
        tpn.init_from_imagenet(model, s.pretrained)
    if initialise and s.checkpoint:
        report = tpn.load_checkpoint(
            model, s.checkpoint, drop_classifier=True, other_architecture=s.allow_other_architecture
        )
        for note in report.notes:
            log.info(note)
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last_3d)
    return model


def amp_dtype(s: TrainSettings, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on a GPU unless --no-amp; fp32 on a CPU unless --amp."""
    amp = s.amp if s.amp is not None else device.type == "cuda"
    return torch.bfloat16 if amp else None


def use_channels_last(s: TrainSettings, device: torch.device, amp: bool, is_main: bool) -> bool:
    """NDHWC for 3D models on a GPU, unless the cuDNN build mis-computes bf16 3D convs."""
    if device.type != "cuda":
        return False
    wanted = s.channels_last
    if wanted is None:
        wanted = tpn.get_config(s.model).backbone == "slowonly"
    problem = cudnn_problem(torch.backends.cudnn.version(), amp)
    if problem and is_main:
        log.warning(problem)
    return bool(wanted) and not (problem and "turned off" in problem)


def step_options(s: TrainSettings, amp: torch.dtype | None, channels_last: bool, distributed: bool) -> StepOptions:
    return StepOptions(
        clip_grad=s.clip_grad or None,
        amp_dtype=amp,
        channels_last=channels_last,
        cuda_graph=s.cuda_graph,
        warmup_iters=11 if distributed else 3,
        compile=s.compile,
    )


def step_net(model: nn.Module, aux_weight: float, env: DistEnv, device: torch.device) -> nn.Module:
    """What the step runs: LossModule, in DDP when distributed (built on a side stream, as graph capture requires)."""
    net: nn.Module = LossModule(model, aux_weight)
    if not env.distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP

    # broadcast_buffers=False: no per-forward BN-buffer broadcast inside the captured
    # step; rank 0's buffers are sent to all ranks before validation and checkpoints.
    if device.type != "cuda":
        return DDP(net, broadcast_buffers=False)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        net = DDP(net, device_ids=[device.index], broadcast_buffers=False)
    torch.cuda.current_stream(device).wait_stream(side)
    return net
