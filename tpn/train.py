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
The files a run writes are listed in `tpn.rundir`; the run's settings and the
resume rules are in `tpn.train_settings`, the command line in `tpn.train_cli`.
"""

from __future__ import annotations

import dataclasses
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
from tpn import rundir
from tpn.distributed import DistEnv, barrier, env_from_environ, gather_objects, init_distributed, resolve_torch_device, shutdown
from tpn.engine import (
    LossLog, LossModule, StepOptions, TrainStep, build_optimizer, cudnn_problem,
    pin_device_lr, set_lr,
)  # fmt: skip
from pipeline.fileio import atomic_write_json
from tpn.schedule import StepSchedule
from tpn.test import EvalReport, evaluate, shard_source
from tpn.train_settings import TrainSettings, effective_lr, val_clip_spec

log = logging.getLogger("tpn.train")

class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or inf; the run stopped and kept its last good checkpoint."""


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


if __name__ == "__main__":
    from tpn.train_cli import main  # the command line lives in its own module

    sys.exit(main())
