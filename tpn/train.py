"""`python -m tpn.train NAME --train SHARDS --val SHARDS --out RUN_DIR`: train a zoo model.

One process (GPU or CPU), or one per GPU under `torchrun --nproc-per-node N
[--nnodes M ...] -m tpn.train ...` (DDP; NCCL on GPUs, gloo on CPU). The
recipe comes from the zoo config (SGD + Nesterov, lr per `lr_batch` clips
scaled linearly to the global batch, step decay, gradient clipping, TPN
auxiliary loss), every part overridable by a flag.

On a GPU the step runs under bf16 autocast with channels_last_3d for 3D
models and is replayed from one CUDA graph (`tpn.engine`). Checkpoints are
atomic; `--resume RUN_DIR` continues exactly where the last one was taken
(on CPU a resumed run's losses are bit-identical to an uninterrupted run's).
The files a run writes are listed in `tpn.rundir`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

import tpn
from pipeline import ClipSpec
from tpn import rundir
from tpn.cli import add_device_args, add_threads_arg
from tpn.distributed import DistEnv, barrier, env_from_environ, gather_objects, init_distributed, resolve_torch_device, shutdown
from tpn.engine import (
    COMPILE_PRESETS, DEFAULT_COMPILE, LossLog, LossModule, StepOptions, TrainStep, build_optimizer, cudnn_problem,
    pin_device_lr, set_lr,
)  # fmt: skip
from pipeline.fileio import atomic_write_json
from tpn.schedule import StepSchedule, scaled_lr
from tpn.test import EvalReport, evaluate, shard_source

log = logging.getLogger("tpn.train")

RECIPE_FIELDS = ("epochs", "batch_size", "momentum", "nesterov", "weight_decay", "clip_grad",
                 "lr_steps", "lr_gamma", "warmup_epochs", "aux_weight")  # fmt: skip


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf; the run stopped and kept its last good checkpoint."""


@dataclass(frozen=True, kw_only=True)
class TrainSettings:
    """Everything that defines a run; saved as settings.json and in every checkpoint."""

    model: str
    train: tuple[str, ...]
    out: str
    val: tuple[str, ...] = ()
    train_split: str = "train"
    val_split: str = "val"
    # recipe (defaults: the zoo config's TrainRecipe, see `resolve_settings`)
    epochs: int
    batch_size: int  # per process
    lr: float | None = None  # None: recipe lr * global batch / recipe lr_batch
    momentum: float
    nesterov: bool
    weight_decay: float
    clip_grad: float  # 0 turns clipping off
    lr_steps: tuple[int, ...]
    lr_gamma: float
    warmup_epochs: float
    aux_weight: float
    dropout: float | None = None  # None: the config's (0.5)
    bn_eval: bool = False  # BN layers use and keep their running statistics (the seed's `bn_eval`)
    # initialisation
    num_classes: int | None = None  # None: the shards' class count
    pretrained: str | None = None  # torchvision-style 2D ImageNet ResNet
    checkpoint: str | None = None  # initial weights (any supported format)
    # checkpoints and logging
    save_every: int = 0  # steps; 0 = only at epoch ends
    keep_last: int = 3
    log_every: int = 20
    val_every: int = 1
    val_views: str = "single"  # "single" (1 clip, centre crop) or "protocol" (the test protocol)
    max_steps: int | None = None  # stop (with a checkpoint) after this many steps in total
    # execution
    seed: int = 0
    device: str = "auto"
    loader_device: str = "auto"
    decoder: str = "auto"  # loader decoder: auto, nvdec, cpu or pyav
    threads: int | None = None
    workers: int | None = None
    amp: bool | None = None  # None: bf16 on GPU, fp32 on CPU
    cuda_graph: bool = True
    channels_last: bool | None = None  # None: on for 3D models on GPU
    compile: str | None = None  # a tpn.engine.COMPILE_PRESETS name: torch.compile the forward + loss
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("train", "val", "lr_steps"):  # JSON and checkpoints give lists back
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.compile, bool):  # settings saved before presets existed
            object.__setattr__(self, "compile", DEFAULT_COMPILE if self.compile else None)
        problems = [msg for ok, msg in (
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr is None or self.lr > 0, "--lr must be > 0"),
            (self.clip_grad >= 0, "--clip-grad must be >= 0 (0 = off)"),
            (self.log_every >= 1, "--log-every must be >= 1"),
            (self.save_every >= 0, "--save-every must be >= 0"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
            (self.val_views in ("single", "protocol"), "--val-views must be 'single' or 'protocol'"),
            (bool(self.train), "--train needs at least one shard directory or .tar"),
            (self.compile in (None, *COMPILE_PRESETS), f"--compile must be one of {', '.join(COMPILE_PRESETS)}"),
        ) if not ok]  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSettings:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training setting(s) {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def resolve_settings(model: str, overrides: dict[str, Any]) -> TrainSettings:
    """The zoo config's recipe, with the explicitly given settings on top."""
    recipe = tpn.get_config(model).recipe
    base = {k: getattr(recipe, k) for k in RECIPE_FIELDS}
    return TrainSettings.from_dict({**base, "model": model, **overrides})


def effective_lr(s: TrainSettings, world_size: int) -> float:
    """--lr as given, else the recipe's lr scaled linearly to the global batch."""
    if s.lr is not None:
        return s.lr
    recipe = tpn.get_config(s.model).recipe
    return scaled_lr(recipe.lr, recipe.lr_batch, s.batch_size * world_size)


def val_clip_spec(clip: ClipSpec, views: str) -> ClipSpec:
    """Validation views: one centre-cropped clip (fast, as mmaction2's val pipeline) or the test protocol."""
    if views == "protocol":
        return clip
    return clip.replace(test_clips=1, test_crops="center", twice_sample=False, test_flip=False)


@dataclass
class Progress:
    """Where a run stands; saved in checkpoints so a resume continues at the same batch."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # the epoch in progress (or next)
    batch: int = 0  # batches of `epoch` done
    best_top1: float | None = None
    best_epoch: int | None = None
    last_top1: float | None = None
    train_time_s: float = 0.0  # summed over resumed segments, validation excluded


@dataclass
class TrainSummary:
    model: str
    run_dir: str
    stopped: str  # "completed" | "max_steps"
    epochs_done: int
    steps: int
    best_top1: float | None
    best_epoch: int | None
    last_top1: float | None
    train_time_s: float
    clips_per_s: float
    wall_time_s: float
    step_mode: str = "eager"  # what ran: eager, cuda-graph, compiled or compiled+cuda-graph
    step: dict[str, Any] | None = None  # tpn.engine.StepReport: requested mode, graph replays, fallback, compile

    def text(self) -> str:
        best = "-" if self.best_top1 is None else f"{self.best_top1:.2f}% (epoch {self.best_epoch})"
        return (
            f"{self.model}: {self.stopped} after {self.epochs_done} epoch(s), {self.steps} steps; "
            f"best val Top-1 {best}; {self.clips_per_s:.1f} clips/s ({self.step_mode}); "
            f"train time {self.train_time_s:.1f}s; outputs in {self.run_dir}"
        )


LoaderFactory = Callable[..., Any]


def _default_loader_factory() -> LoaderFactory:
    from pipeline import ClipLoader

    return ClipLoader


class Trainer:
    """One run: model, optimizer, step, loaders and RUN_DIR bookkeeping."""

    def __init__(
        self, s: TrainSettings, env: DistEnv, device: torch.device, *,
        resume: dict | None = None, make_loader: LoaderFactory | None = None,
    ) -> None:  # fmt: skip
        self.s, self.env, self.device = s, env, device
        self.run_dir = Path(s.out)
        self.wall0 = time.perf_counter()
        self.amp_dtype = self._amp_dtype()
        self.channels_last = self._channels_last()
        self._rng_to_restore: dict | None = None
        make_loader = make_loader or _default_loader_factory()
        rundir.seed_everything(s.seed + env.rank)  # dropout differs per rank; DDP syncs the weights
        self.train_loader = self._loader(make_loader, "train")
        self.val_loader = self._loader(make_loader, "val") if s.val else None
        self.num_classes = s.num_classes or self.train_loader.num_classes
        self.model = self._build_model(initialise=resume is None)
        self.lr0 = effective_lr(s, env.world_size)
        self.schedule = StepSchedule(
            base_lr=self.lr0, steps_per_epoch=len(self.train_loader), milestones=s.lr_steps,
            gamma=s.lr_gamma, warmup_epochs=s.warmup_epochs,
        )  # fmt: skip
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(params, lr=self.lr0, momentum=s.momentum, nesterov=s.nesterov,
                                         weight_decay=s.weight_decay, device=device)  # fmt: skip
        self.progress = Progress()
        if resume is not None:
            self._restore(resume)
        self.step_fn = TrainStep(self._wrap(), self.optimizer, self._step_options(), device)
        self.losses = LossLog(s.log_every, device)
        self.metrics = rundir.MetricsWriter(self.run_dir) if env.is_main else None
        if resume is not None and self.metrics:
            self.metrics.truncate_after(self.progress.step)
        self._lr_set: float | None = None
        self._window = (time.perf_counter(), 0)  # (start, clips) of the current logging window

    # ---------------------------------------------------------------- setup

    def _loader(self, make_loader: LoaderFactory, which: str):
        s = self.s
        clip = tpn.get_config(s.model).clip
        paths, split = (s.train, s.train_split) if which == "train" else (s.val, s.val_split)
        source, split = shard_source(paths, split)
        kwargs: dict[str, Any] = dict(
            batch_size=s.batch_size, device=s.loader_device, decoder=s.decoder, seed=s.seed, num_threads=s.workers,
            rank=self.env.rank, world_size=self.env.world_size, split=split,
        )  # fmt: skip
        if which == "train":
            return make_loader(source, clip, mode="train", **kwargs)
        return make_loader(source, val_clip_spec(clip, s.val_views), mode="test", return_keys=True, **kwargs)

    def _build_model(self, initialise: bool) -> nn.Module:
        """The zoo model for the shards' classes; --pretrained/--checkpoint unless resuming."""
        s, cfg = self.s, tpn.get_config(self.s.model)
        if self.num_classes != cfg.num_classes and self.env.is_main:
            log.info("%s: %d classes in the shards (the config has %d): building the classifier for %d",
                     s.model, self.num_classes, cfg.num_classes, self.num_classes)  # fmt: skip
        extra = {} if s.dropout is None else {"dropout": s.dropout}
        model = tpn.create_model(s.model, num_classes=self.num_classes, **extra)
        if initialise and s.pretrained:
            tpn.init_from_imagenet(model, s.pretrained)
        if initialise and s.checkpoint:
            for note in tpn.load_checkpoint(model, s.checkpoint, drop_classifier=True).notes:
                log.info(note)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last_3d)
        return model

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.s.amp if self.s.amp is not None else self.device.type == "cuda"
        return torch.bfloat16 if amp else None

    def _channels_last(self) -> bool:
        """NDHWC for 3D models on a GPU, unless the cuDNN build mis-computes bf16 3D convs."""
        if self.device.type != "cuda":
            return False
        wanted = self.s.channels_last
        if wanted is None:
            wanted = tpn.get_config(self.s.model).backbone == "slowonly"
        problem = cudnn_problem(torch.backends.cudnn.version(), self.amp_dtype is not None)
        if problem and self.env.is_main:
            log.warning(problem)
        return bool(wanted) and not (problem and "turned off" in problem)

    def _step_options(self) -> StepOptions:
        return StepOptions(
            clip_grad=self.s.clip_grad or None, amp_dtype=self.amp_dtype, channels_last=self.channels_last,
            cuda_graph=self.s.cuda_graph, warmup_iters=11 if self.env.distributed else 3, compile=self.s.compile,
        )  # fmt: skip

    def _wrap(self) -> nn.Module:
        """LossModule, in DDP when distributed (built on a side stream, as graph capture requires)."""
        net: nn.Module = LossModule(self.model, self.s.aux_weight)
        if not self.env.distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP

        # broadcast_buffers=False: no per-forward BN-buffer broadcast inside the captured
        # step; rank 0's buffers are sent to all ranks before validation and checkpoints.
        if self.device.type != "cuda":
            return DDP(net, broadcast_buffers=False)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            net = DDP(net, device_ids=[self.device.index], broadcast_buffers=False)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return net

    def _restore(self, ckpt: dict) -> None:
        tpn.load_checkpoint(self.model, ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        pin_device_lr(self.optimizer, self.device)
        self.progress = Progress(**ckpt["progress"])
        states = ckpt["rng"]
        if len(states) != self.env.world_size:
            raise ValueError(f"the checkpoint was written by {len(states)} process(es); resume with the same number")
        self._rng_to_restore = states[self.env.rank]

    # ---------------------------------------------------------------- bookkeeping

    def write_settings(self) -> None:
        if not self.env.is_main:
            return
        derived = {
            "world_size": self.env.world_size, "global_batch": self.s.batch_size * self.env.world_size,
            "effective_lr": self.lr0, "num_classes": self.num_classes, "steps_per_epoch": len(self.train_loader),
            "device": str(self.device), "amp_dtype": str(self.amp_dtype), "channels_last": self.channels_last,
            "torch": torch.__version__, "cudnn": torch.backends.cudnn.version() if self.device.type == "cuda" else None,
        }  # fmt: skip
        atomic_write_json(self.run_dir / "settings.json", {"settings": self.s.to_dict(), "derived": derived})

    def _sync_buffers(self) -> None:
        """Give every rank rank 0's BN statistics (buffers are not broadcast per step)."""
        if self.env.distributed:
            for b in self.model.buffers():
                torch.distributed.broadcast(b, 0)

    def save(self) -> Path | None:
        """Atomic rolling checkpoint; every rank must call it (RNG states are gathered)."""
        rng = gather_objects(rundir.rng_state(self.device), self.env)
        self._sync_buffers()
        if not self.env.is_main:
            return None
        from tpn.checkpoint import save_checkpoint

        path = self.run_dir / rundir.checkpoint_name(self.progress.step)
        save_checkpoint(
            path, self.model, optimizer=self.optimizer.state_dict(), progress=dataclasses.asdict(self.progress),
            settings=self.s.to_dict(), rng=rng, classes=list(self.train_loader.classes),
        )  # fmt: skip
        rundir.prune_checkpoints(self.run_dir, self.s.keep_last)
        return path

    def _save_best(self, report: EvalReport) -> None:
        if not self.env.is_main:
            return
        from tpn.checkpoint import save_checkpoint

        save_checkpoint(self.run_dir / "best.pth", self.model, epoch=self.progress.epoch, step=self.progress.step,
                        val=report.to_dict(), classes=list(self.train_loader.classes))  # fmt: skip

    def flush(self, bar) -> None:
        """Read back the pending losses (one sync), log them, stop on NaN/inf."""
        records = self.losses.drain(self.env)
        if not records:
            return
        now = time.perf_counter()
        start, clips = self._window
        self.progress.train_time_s += now - start
        rate = clips / max(now - start, 1e-9)
        self._window = (now, 0)
        if self.metrics:
            self.metrics.write(records)
        if bar is not None:
            bar.set_postfix(loss=f"{records[-1]['loss']:.4f}", lr=f"{records[-1]['lr']:.3g}", clips_s=f"{rate:.1f}")
        bad = next((r for r in records if not math.isfinite(r["loss"])), None)
        if bad is not None:
            last = rundir.list_checkpoints(self.run_dir)
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
            raise NonFiniteLoss(
                f"training loss became {bad['loss']} at step {bad['step']} (epoch {bad['epoch']}, lr {bad['lr']:.3g}); "
                f"stopped. {kept}. Lower --lr or --warmup-epochs up, or check the data, then --resume {self.run_dir}."
            )

    # ---------------------------------------------------------------- loop

    def fit(self) -> TrainSummary:
        self.write_settings()
        if self._rng_to_restore is not None:
            rundir.set_rng_state(self._rng_to_restore, self.device)
        bar = self._bar()
        stopped = "completed"
        try:
            for epoch in range(self.progress.epoch, self.s.epochs):
                if self.train_epoch(epoch, bar):
                    stopped = "max_steps"
                    break
                self.end_epoch(epoch)
        finally:
            if bar is not None:
                bar.close()
            if self.metrics:
                self.metrics.close()
        return self.finish(stopped)

    def _bar(self):
        if not (self.env.is_main and self.s.progress):
            return None
        from tqdm import tqdm

        total = self.s.epochs * len(self.train_loader)
        if self.s.max_steps:
            total = min(total, self.s.max_steps)
        gb = self.s.batch_size * self.env.world_size
        return tqdm(total=total * gb, initial=self.progress.step * gb, unit="clip", unit_scale=True,
                    desc=self.s.model, dynamic_ncols=True)  # fmt: skip

    def train_mode(self) -> None:
        self.model.train()
        if self.s.bn_eval:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_epoch(self, epoch: int, bar) -> bool:
        """Run the rest of `epoch`; True when --max-steps stopped the run."""
        p, s = self.progress, self.s
        if s.max_steps and p.step >= s.max_steps:  # resumed past the stop point: nothing to do
            return True
        self.train_loader.set_epoch(epoch, start_batch=p.batch)
        self.train_mode()
        gb = s.batch_size * self.env.world_size
        for x, y in self.train_loader:
            lr = self.schedule(p.step)
            if lr != self._lr_set:
                set_lr(self.optimizer, lr)
                self._lr_set = lr
            loss = self.step_fn(*self._to_device(x, y))
            p.step, p.batch = p.step + 1, p.batch + 1
            self.losses.add(loss, p.step, epoch, lr)
            self._window = (self._window[0], self._window[1] + gb)
            if bar is not None:
                bar.update(gb)
            if self.losses.full:
                self.flush(bar)
            at_end = p.batch == len(self.train_loader)  # end_epoch checkpoints it anyway
            saved = bool(s.save_every) and p.step % s.save_every == 0 and not at_end
            if saved:
                self.flush(bar)
                self.save()
            if s.max_steps and p.step >= s.max_steps:
                self.flush(bar)
                if not saved:
                    self.save()
                return True
        self.flush(bar)
        p.epoch, p.batch = epoch + 1, 0
        return False

    def end_epoch(self, epoch: int) -> None:
        """Validate (every --val-every epochs and at the last), record, checkpoint."""
        p, s = self.progress, self.s
        record: dict[str, Any] = {"type": "epoch", "epoch": epoch + 1, "step": p.step,
                                  "train_time_s": round(p.train_time_s, 3)}  # fmt: skip
        if self.val_loader is not None and ((epoch + 1) % s.val_every == 0 or epoch + 1 == s.epochs):
            self._sync_buffers()
            report = evaluate(self.model, self.val_loader, device=self.device, env=self.env,
                              amp_dtype=self.amp_dtype, channels_last=self.channels_last)  # fmt: skip
            record.update(val_top1=report.top1, val_top5=report.top5, val_mean_class=report.mean_class_acc,
                          val_videos=report.num_videos)  # fmt: skip
            p.last_top1 = report.top1
            if p.best_top1 is None or report.top1 > p.best_top1:
                p.best_top1, p.best_epoch = report.top1, epoch + 1
                self._save_best(report)
            if self.env.is_main:
                log.info("epoch %d: val Top-1 %.2f Top-5 %.2f (best %.2f, epoch %d)",
                         epoch + 1, report.top1, report.top5, p.best_top1, p.best_epoch)  # fmt: skip
        if self.metrics:
            self.metrics.write([record])
        self.save()
        self._window = (time.perf_counter(), 0)  # validation time is not training time

    def finish(self, stopped: str) -> TrainSummary:
        p, s = self.progress, self.s
        summary = TrainSummary(
            model=s.model, run_dir=str(self.run_dir), stopped=stopped, epochs_done=p.epoch, steps=p.step,
            best_top1=p.best_top1, best_epoch=p.best_epoch, last_top1=p.last_top1,
            train_time_s=p.train_time_s,
            clips_per_s=p.step * s.batch_size * self.env.world_size / max(p.train_time_s, 1e-9),
            wall_time_s=time.perf_counter() - self.wall0, step_mode=self.step_fn.mode,
            step=self.step_fn.report().to_dict(),
        )  # fmt: skip
        if self.env.is_main:
            log_step_report(summary.step, on_gpu=self.device.type == "cuda")
            atomic_write_json(self.run_dir / "summary.json", dataclasses.asdict(summary))
            rundir.plot_curves(rundir.read_metrics(self.run_dir), self.run_dir / "curves.png", s.model)
        barrier(self.env)
        return summary


def log_step_report(report: dict[str, Any], on_gpu: bool) -> None:
    """One line on what the training step ran as; a warning when a GPU run did not use its requested graph."""
    compiled = ""
    if report["compile"]:
        took = "" if report["compile_s"] is None else f" in {report['compile_s']:.1f} s"
        compiled = f", compiled with preset {report['compile']}{took}"
    log.info("training step: %s (requested %s), %d steps: %d graph replays, %d eager%s", report["mode"],
             report["requested"], report["steps"], report["graph_replays"], report["eager_steps"], compiled)  # fmt: skip
    if report["requested"] != report["mode"] and report["steps"]:
        level = logging.WARNING if on_gpu else logging.INFO
        log.log(level, "the training step ran as %s, not %s: %s", report["mode"], report["requested"], report["fallback"])


def train(
    s: TrainSettings, *, resume: dict | None = None, make_loader: LoaderFactory | None = None
) -> TrainSummary:
    """Train (or continue, with `resume` = a loaded checkpoint) and return the summary.

    Call once per process; under torchrun the process group is set up from
    the environment. `make_loader` builds the loaders (default:
    `pipeline.ClipLoader`, same signature).
    """
    env = env_from_environ()
    if s.threads:
        torch.set_num_threads(s.threads)
    device = resolve_torch_device(s.device, env)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static clip shapes: search conv algorithms once
    init_distributed(device, env, cuda_graphs=s.cuda_graph)
    try:
        return Trainer(s, env, device, resume=resume, make_loader=make_loader).fit()
    finally:
        shutdown()


# ---------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tpn.train",
        description="Train a zoo model on WebDataset shards (one process, or one per GPU under "
        "`torchrun --nproc-per-node N -m tpn.train ...`). Unset recipe flags take the zoo config's "
        "recipe; with --resume, unset flags keep the resumed run's settings.",
        argument_default=argparse.SUPPRESS,  # only flags given on the command line override
    )
    p.add_argument("name", nargs="?", help="zoo model name (see `python -m tpn`); optional with --resume")
    g = p.add_argument_group("data and outputs")
    g.add_argument("--train", nargs="+", help="training shards: a shard directory (its train-*.tar if any) or .tar paths")
    g.add_argument("--val", nargs="+", help="validation shards (a directory's val-*.tar if any); omit to skip validation")
    g.add_argument("--train-split", help="split prefix used inside a --train directory (default: train)")
    g.add_argument("--val-split", help="split prefix used inside a --val directory (default: val)")
    g.add_argument("--out", help="RUN_DIR for checkpoints, metrics, curves and summary (default with --resume: its run)")
    g.add_argument("--resume", help="continue exactly from RUN_DIR (its newest checkpoint) or a step_*.pth file")
    r = p.add_argument_group("recipe (defaults from the zoo config's TrainRecipe)")
    r.add_argument("--epochs", type=int, help="epochs to train")
    r.add_argument("--batch-size", type=int, help="clips per process and step (global batch = this x processes)")
    r.add_argument("--lr", type=float, help="learning rate (default: recipe lr x global batch / recipe lr_batch)")
    r.add_argument("--momentum", type=float, help="SGD momentum")
    r.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum")
    r.add_argument("--weight-decay", type=float, help="L2 weight decay")
    r.add_argument("--clip-grad", type=float, help="max L2 norm of the gradients (0 = no clipping)")
    r.add_argument("--lr-steps", type=int, nargs="*", help="epochs at which the lr is multiplied by --lr-gamma")
    r.add_argument("--lr-gamma", type=float, help="step-decay factor")
    r.add_argument("--warmup-epochs", type=float, help="linear lr warmup length in epochs (0 = none)")
    r.add_argument("--aux-weight", type=float, help="TPN auxiliary loss weight")
    r.add_argument("--dropout", type=float, help="dropout before the classifier (default: the config's, 0.5)")
    r.add_argument("--bn-eval", action=argparse.BooleanOptionalAction,
                   help="keep BatchNorm in eval mode: fixed running statistics, trained affine (default: off)")  # fmt: skip
    i = p.add_argument_group("initialisation")
    i.add_argument("--num-classes", type=int, help="classifier size (default: the shards' classes.json count)")
    i.add_argument("--pretrained", help="2D ImageNet ResNet (torchvision-style .pth) to inflate into the backbone")
    i.add_argument("--checkpoint", help="initial weights (this toolkit's, original TPN's or mmaction2's); a "
                   "classifier of another size is left freshly initialised")  # fmt: skip
    c = p.add_argument_group("checkpoints and logging")
    c.add_argument("--save-every", type=int, help="also checkpoint every N steps (default: 0 = epoch ends only)")
    c.add_argument("--keep-last", type=int, help="rolling checkpoints to keep (default: 3; 0 = all)")
    c.add_argument("--log-every", type=int, help="read the loss back every N steps (default: 20)")
    c.add_argument("--val-every", type=int, help="validate every N epochs, and after the last (default: 1)")
    c.add_argument("--val-views", choices=["single", "protocol"],
                   help="validation views: one centre clip (default) or the full test protocol")  # fmt: skip
    c.add_argument("--max-steps", type=int, help="stop after this many steps in total, with a checkpoint")
    c.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    e = p.add_argument_group("execution", "under torchrun, --device cuda is each process's GPU (its LOCAL_RANK)")
    e.add_argument("--seed", type=int, help="seed of data order, augmentation and init (default: 0)")
    add_device_args(e, defaults=False)  # --device, --loader-device, --decoder, --workers, as tpn.test has them
    add_threads_arg(e, argparse.SUPPRESS)
    e.add_argument("--amp", action=argparse.BooleanOptionalAction, help="bf16 autocast (default: on GPU only)")
    e.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction,
                   help="capture the whole step in one CUDA graph (default: on; GPU only)")  # fmt: skip
    e.add_argument("--compile", nargs="?", const=DEFAULT_COMPILE, choices=list(COMPILE_PRESETS), metavar="PRESET",
                   help=f"torch.compile the forward + loss, compiled during the warm-up steps (default: off); "
                        f"PRESET is a set of Inductor options: {', '.join(COMPILE_PRESETS)} "
                        f"(tpn.engine.COMPILE_PRESETS; without one: {DEFAULT_COMPILE})")  # fmt: skip
    e.add_argument("--no-compile", dest="compile", action="store_const", const=None, help="do not compile (default)")
    e.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="channels_last_3d memory format (default: on for 3D models on GPU)")  # fmt: skip
    return p


_LIST_FLAGS = ("train", "val", "lr_steps")


def settings_from_args(args: argparse.Namespace) -> tuple[TrainSettings, dict | None]:
    """Resolve the CLI into settings (and the checkpoint to resume from, loaded)."""
    given = {k: v for k, v in vars(args).items() if k not in ("name", "resume")}
    if "resume" not in vars(args):
        if not getattr(args, "name", None):
            raise ValueError("give a model name (see `python -m tpn`), or --resume RUN_DIR")
        for needed in ("train", "out"):
            if needed not in given:
                raise ValueError(f"--{needed} is required for a new run")
        return resolve_settings(args.name, given), None
    return _resume_settings(args, given)


def _resume_settings(args: argparse.Namespace, given: dict[str, Any]) -> tuple[TrainSettings, dict]:
    from tpn.checkpoint import read_checkpoint

    path = rundir.resume_checkpoint(args.resume)
    ckpt = read_checkpoint(path)
    if "settings" not in ckpt or "progress" not in ckpt:
        raise ValueError(f"{path} is not a training checkpoint of tpn.train (no settings/progress): use --checkpoint to start from its weights")
    saved = dict(ckpt["settings"])
    saved.pop("max_steps", None)  # a stop point of the earlier invocation, not of the run
    if getattr(args, "name", None) and args.name != saved["model"]:
        raise ValueError(f"{path} trains {saved['model']!r}, not {args.name!r}")
    for fixed in ("batch_size", "seed"):
        if fixed in given and given[fixed] != saved[fixed]:
            raise ValueError(f"--{fixed.replace('_', '-')} {given[fixed]} differs from the resumed run's {saved[fixed]}; "
                             "an exact resume needs the same data order")  # fmt: skip
    if "out" not in given:  # the run continues where its checkpoint lies
        saved["out"] = str(path.parent)
    changed = {k: v for k, v in given.items() if saved.get(k) != v}
    if changed:
        log.info("resuming with changed settings: %s", changed)
    return TrainSettings.from_dict({**saved, **given}), ckpt


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        settings, ckpt = settings_from_args(args)
        summary = train(settings, resume=ckpt)
    except NonFiniteLoss as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError, RuntimeError, TypeError) as e:  # bad names, paths, shards, checkpoints
        print(f"error: {e}", file=sys.stderr)
        return 1
    if env_from_environ().is_main:
        print(summary.text())
        print(json.dumps(dataclasses.asdict(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
