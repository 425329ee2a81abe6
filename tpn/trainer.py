"""The trainer behind `python -m tpn.train NAME --train SHARDS --val SHARDS --out RUN_DIR` (`tpn/train.py`).

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

Where things live: the run's settings and the resume rules in
`tpn.train_settings`, the command line in `tpn.train` (`python -m tpn.train`), the building of
loaders, model and step in `tpn.train_setup`, and here the loop,
`Trainer.fit`, whose every decision after a step (read the losses back,
end the epoch, validate, checkpoint, stop) is made by the pure function
`step_actions`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tpn
from tpn import rundir
from tpn.distributed import (
    DistEnv,
    barrier,
    env_from_environ,
    gather_objects,
    init_distributed,
    resolve_torch_device,
    shutdown,
)
from tpn.engine import LossLog, StepReport, TrainStep, build_optimizer, pin_device_lr, set_lr
from tpn.layers import train_mode
from pipeline import atomic_write_json
from tpn.schedule import StepSchedule
from tpn.evaluate import EvalReport, evaluate
from tpn.train_settings import TrainSettings, effective_lr
from tpn.train_setup import (
    LoaderFactory,
    amp_dtype,
    build_loader,
    build_train_model,
    default_loader_factory,
    step_net,
    step_options,
    use_channels_last,
)

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


# ---------------------------------------------------------------------- the loop's decisions


@dataclass(frozen=True)
class Actions:
    """What the loop does where the run stands, in this order."""

    flush: bool = False  # read the pending losses back (the loop's one host sync), log them, stop on NaN/inf
    end_epoch: bool = False  # the epoch's batches are done: move on to the next, write its record
    validate: bool = False  # score the validation shards (at an epoch's end)
    save: bool = False  # write a rolling checkpoint (after the flush, so never one of a diverged run)
    stop: bool = False  # --max-steps reached: the run ends here


def at_max_steps(step: int, s: TrainSettings) -> bool:
    return bool(s.max_steps) and step >= s.max_steps


def step_actions(step: int, epoch: int, loader_done: bool, pending: int, s: TrainSettings) -> Actions:
    """The loop's decisions after `step` steps in all, in `epoch`, with `pending` losses unread.

    | where the run stands                       | flush | end_epoch | validate | save | stop |
    |--------------------------------------------|:-----:|:---------:|:--------:|:----:|:----:|
    | --max-steps reached                        |   x   |           |          |  x   |  x   |
    | the epoch's end (its loader ran out)       |   x   |     x     |   (1)    |  x   |      |
    | a multiple of --save-every                 |   x   |           |          |  x   |      |
    | --log-every losses pending                 |   x   |           |          |      |      |

    (1) with --val: every --val-every epochs, and after the last one.
    `loader_done`: the epoch's loader has run out, however many batches it
    gave. A stop on an epoch's last batch leaves the epoch open (no
    validation); a run resumed there starts by ending it.
    """
    stop = at_max_steps(step, s)
    end_epoch = loader_done and not stop
    validate = end_epoch and bool(s.val) and ((epoch + 1) % s.val_every == 0 or epoch + 1 == s.epochs)
    save = stop or end_epoch or (bool(s.save_every) and step % s.save_every == 0)
    flush = save or pending >= s.log_every
    return Actions(flush=flush, end_epoch=end_epoch, validate=validate, save=save, stop=stop)


class Throughput:
    """Clips per second over the current logging window; the windows' seconds add up to the training time."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.restart()

    def restart(self) -> None:
        """Open a new window now: the time since the last lap (validation, checkpoints) is not training time."""
        self.start, self.clips = self.clock(), 0

    def add(self, clips: int) -> None:
        self.clips += clips

    def lap(self) -> tuple[float, float]:
        """(seconds, clips/s) of the window; the next one opens now."""
        now = self.clock()
        seconds, rate = now - self.start, self.clips / max(now - self.start, 1e-9)
        self.start, self.clips = now, 0
        return seconds, rate


# ---------------------------------------------------------------------- the run


class Trainer:
    """One run: model, optimizer, step, loaders and RUN_DIR bookkeeping; `fit` is the loop."""

    def __init__(
        self,
        s: TrainSettings,
        env: DistEnv,
        device: torch.device,
        *,
        resume: dict | None = None,
        make_loader: LoaderFactory | None = None,
    ) -> None:
        self.s, self.env, self.device = s, env, device
        self.run_dir = Path(s.out)
        self.wall0 = time.perf_counter()
        self.amp_dtype = amp_dtype(s, device)
        self.channels_last = use_channels_last(s, device, self.amp_dtype is not None, env.is_main)
        self._rng_to_restore: dict | None = None
        make_loader = make_loader or default_loader_factory()
        rundir.seed_everything(s.seed + env.rank)  # dropout differs per rank; DDP syncs the weights
        self.train_loader = build_loader(make_loader, s, env, "train")
        self.val_loader = build_loader(make_loader, s, env, "val") if s.val else None
        self.num_classes = s.num_classes or self.train_loader.num_classes
        self.global_batch = s.batch_size * env.world_size
        self.model = build_train_model(
            s, self.num_classes, device, self.channels_last, initialise=resume is None, is_main=env.is_main
        )
        self.lr0 = effective_lr(s, env.world_size)
        self.schedule = StepSchedule(
            base_lr=self.lr0,
            steps_per_epoch=len(self.train_loader),
            milestones=s.lr_steps,
            gamma=s.lr_gamma,
            warmup_epochs=s.warmup_epochs,
        )
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            params, lr=self.lr0, momentum=s.momentum, nesterov=s.nesterov, weight_decay=s.weight_decay, device=device
        )
        self.progress = Progress()
        if resume is not None:
            self._restore(resume)
        net = step_net(self.model, s.aux_weight, env, device)
        self.step_fn = TrainStep(
            net, self.optimizer, step_options(s, self.amp_dtype, self.channels_last, env.distributed), device
        )
        self.losses = LossLog(s.log_every, device)
        self.metrics = rundir.MetricsWriter(self.run_dir) if env.is_main else None
        if resume is not None and self.metrics:
            self.metrics.truncate_after(self.progress.step)
        self.bar = None  # the progress bar, on the main process while fitting
        self._lr_set: float | None = None
        self.throughput = Throughput()

    # ---------------------------------------------------------------- the loop

    def fit(self) -> TrainSummary:
        """Train to the last epoch or --max-steps; after each step, do what `step_actions` decides."""
        s, p, steps_per_epoch = self.s, self.progress, len(self.train_loader)
        self.begin()  # settings.json, a resumed run's RNG states, the progress bar
        stop = False
        try:
            for epoch in range(p.epoch, s.epochs):
                if at_max_steps(p.step, s):  # resumed at (or past) its stop point: nothing to do
                    stop = True
                    break
                self.train_loader.set_epoch(epoch, start_batch=p.batch)  # a resumed run continues mid-epoch
                self.train_mode()
                for x, y in self.train_loader:
                    lr = self.schedule(p.step)
                    self._set_lr(lr)  # on a GPU: fills the device tensor the graph reads, no host sync
                    loss = self.step_fn(*self._to_device(x, y))  # on a GPU: one CUDA-graph replay, nothing read back
                    p.step, p.batch = p.step + 1, p.batch + 1
                    self.losses.add(loss, p.step, epoch, lr)  # stays on the device until a flush reads it
                    self.throughput.add(self.global_batch)
                    if self.bar is not None:
                        self.bar.update(self.global_batch)
                    if p.batch < steps_per_epoch:  # the last step's decisions wait for the loader to close
                        stop = self.carry_out(epoch).stop
                        if stop:
                            break
                else:  # the loader ran out: the epoch's end (where a run resumed at it starts)
                    self._check_epoch_length(epoch)
                    stop = self.carry_out(epoch, loader_done=True).stop
                if stop:
                    break
        finally:
            self.end()
        return self.finish("max_steps" if stop else "completed")

    def carry_out(self, epoch: int, loader_done: bool = False) -> Actions:
        """Do what `step_actions` decides for where the run stands now."""
        p = self.progress
        act = step_actions(p.step, epoch, loader_done, len(self.losses), self.s)
        if act.flush:
            self.flush()  # the loop's only host sync (DDP: the losses are averaged over ranks)
        if act.end_epoch:
            p.epoch, p.batch = epoch + 1, 0
            self.end_epoch(epoch, act.validate)
        if act.save:
            self.save()  # every rank: RNG states gathered, rank 0's BN buffers sent to all
        if act.end_epoch:
            self.throughput.restart()  # validation and checkpoint time are not training time
        return act

    def _check_epoch_length(self, epoch: int) -> None:
        """Say so when a (custom) loader gave fewer batches than its len(): the lr schedule counts len() per epoch."""
        given, expected = self.progress.batch, len(self.train_loader)
        if given < expected and self.env.is_main:
            log.warning(
                "epoch %d: the training loader gave %d batches, not the %d of its len(); the epoch ends here, "
                "but the lr schedule counts %d steps per epoch",
                epoch + 1,
                given,
                expected,
                expected,
            )

    def _set_lr(self, lr: float) -> None:
        if lr != self._lr_set:
            set_lr(self.optimizer, lr)
            self._lr_set = lr

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_mode(self) -> None:
        train_mode(self.model, self.s.bn_eval)

    def begin(self) -> None:
        self.write_settings()
        if self._rng_to_restore is not None:
            rundir.set_rng_state(self._rng_to_restore, self.device)
        self.bar = self._bar()

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.metrics:
            self.metrics.close()

    def _bar(self):
        if not (self.env.is_main and self.s.progress):
            return None
        from tqdm import tqdm

        total = self.s.epochs * len(self.train_loader)
        if self.s.max_steps:
            total = min(total, self.s.max_steps)
        gb = self.global_batch
        return tqdm(
            total=total * gb,
            initial=self.progress.step * gb,
            unit="clip",
            unit_scale=True,
            desc=self.s.model,
            dynamic_ncols=True,
        )

    # ---------------------------------------------------------------- what the actions do

    def flush(self) -> None:
        """Read back the pending losses (one sync), log them, stop on NaN/inf."""
        records = self.losses.drain(self.env)
        if not records:
            return
        seconds, rate = self.throughput.lap()
        self.progress.train_time_s += seconds
        if self.metrics:
            self.metrics.write(records)
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{records[-1]['loss']:.4f}", lr=f"{records[-1]['lr']:.3g}", clips_s=f"{rate:.1f}"
            )
        bad = next((r for r in records if not math.isfinite(r["loss"])), None)
        if bad is not None:
            last = rundir.list_checkpoints(self.run_dir)
            kept = f"the last good checkpoint is {last[-1]}" if last else "no checkpoint had been written yet"
            raise NonFiniteLoss(
                f"training loss became {bad['loss']} at step {bad['step']} (epoch {bad['epoch']}, lr {bad['lr']:.3g}); "
                f"stopped. {kept}. Lower --lr or --warmup-epochs up, or check the data, then --resume {self.run_dir}."
            )

    def end_epoch(self, epoch: int, validate: bool) -> None:
        """The epoch's record in metrics.jsonl, with the validation scores when `validate`."""
        p = self.progress
        record: dict[str, Any] = {
            "type": "epoch",
            "epoch": epoch + 1,
            "step": p.step,
            "train_time_s": round(p.train_time_s, 3),
        }
        if validate:
            record.update(self.validate(epoch))
        if self.metrics:
            self.metrics.write([record])

    def validate(self, epoch: int) -> dict[str, Any]:
        """Scores on the validation shards; a new best Top-1 is saved as best.pth."""
        p = self.progress
        self._sync_buffers()  # DDP: every rank evaluates with rank 0's BN statistics
        report = evaluate(
            self.model,
            self.val_loader,
            device=self.device,
            env=self.env,
            amp_dtype=self.amp_dtype,
            channels_last=self.channels_last,
        )
        p.last_top1 = report.top1
        if p.best_top1 is None or report.top1 > p.best_top1:
            p.best_top1, p.best_epoch = report.top1, epoch + 1
            self._save_best(report)
        if self.env.is_main:
            log.info(
                "epoch %d: val Top-1 %.2f Top-5 %.2f (best %.2f, epoch %d)",
                epoch + 1,
                report.top1,
                report.top5,
                p.best_top1,
                p.best_epoch,
            )
        return dict(
            val_top1=report.top1,
            val_top5=report.top5,
            val_mean_class=report.mean_class_acc,
            val_videos=report.num_videos,
        )

    # ---------------------------------------------------------------- checkpoints

    def _restore(self, ckpt: dict) -> None:
        tpn.load_checkpoint(self.model, ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        pin_device_lr(self.optimizer, self.device)
        self.progress = Progress(**ckpt["progress"])
        states = ckpt["rng"]
        if len(states) != self.env.world_size:
            raise ValueError(f"the checkpoint was written by {len(states)} process(es); resume with the same number")
        self._rng_to_restore = states[self.env.rank]

    def write_settings(self) -> None:
        if not self.env.is_main:
            return
        derived = {
            "world_size": self.env.world_size,
            "global_batch": self.global_batch,
            "effective_lr": self.lr0,
            "num_classes": self.num_classes,
            "steps_per_epoch": len(self.train_loader),
            "device": str(self.device),
            "amp_dtype": str(self.amp_dtype),
            "channels_last": self.channels_last,
            "torch": torch.__version__,
            "cudnn": torch.backends.cudnn.version() if self.device.type == "cuda" else None,
        }
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
            path,
            self.model,
            optimizer=self.optimizer.state_dict(),
            progress=dataclasses.asdict(self.progress),
            settings=self.s.to_dict(),
            rng=rng,
            classes=list(self.train_loader.classes),
        )
        rundir.prune_checkpoints(self.run_dir, self.s.keep_last)
        return path

    def _save_best(self, report: EvalReport) -> None:
        if not self.env.is_main:
            return
        from tpn.checkpoint import save_checkpoint

        save_checkpoint(
            self.run_dir / "best.pth",
            self.model,
            epoch=self.progress.epoch,
            step=self.progress.step,
            val=report.to_dict(),
            classes=list(self.train_loader.classes),
        )

    def finish(self, stopped: str) -> TrainSummary:
        p, s = self.progress, self.s
        summary = TrainSummary(
            model=s.model,
            run_dir=str(self.run_dir),
            stopped=stopped,
            epochs_done=p.epoch,
            steps=p.step,
            best_top1=p.best_top1,
            best_epoch=p.best_epoch,
            last_top1=p.last_top1,
            train_time_s=p.train_time_s,
            clips_per_s=p.step * self.global_batch / max(p.train_time_s, 1e-9),
            wall_time_s=time.perf_counter() - self.wall0,
            step_mode=self.step_fn.mode,
            step=self.step_fn.report().to_dict(),
        )
        if self.env.is_main:
            log_step_report(self.step_fn.report(), on_gpu=self.device.type == "cuda")
            atomic_write_json(self.run_dir / "summary.json", dataclasses.asdict(summary))
            rundir.plot_curves(
                rundir.read_metrics(self.run_dir), self.run_dir / "curves.png", s.model, num_classes=self.num_classes
            )
        barrier(self.env)
        return summary


def log_step_report(report: StepReport, on_gpu: bool) -> None:
    """One line on what the training step ran as; a warning when a GPU run fell back from its requested graph.

    A run shorter than the warm-up ran eagerly without falling back (its graph was never due): no warning.
    """
    compiled = ""
    if report.compile:
        took = "" if report.compile_s is None else f" in {report.compile_s:.1f} s"
        compiled = f", compiled with preset {report.compile}{took}"
    log.info(
        "training step: %s (requested %s), %d steps: %d graph replays, %d eager%s",
        report.mode,
        report.requested,
        report.steps,
        report.graph_replays,
        report.eager_steps,
        compiled,
    )
    if report.fell_back and report.steps:
        level = logging.WARNING if on_gpu else logging.INFO
        log.log(level, "the training step ran as %s, not %s: %s", report.mode, report.requested, report.fallback)


def train(s: TrainSettings, *, resume: dict | None = None, make_loader: LoaderFactory | None = None) -> TrainSummary:
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
