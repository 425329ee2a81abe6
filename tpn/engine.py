"""The training step: forward, losses, backward, clipping and SGD, eager or as one CUDA graph.

On a GPU the whole step is captured once and replayed with the batch copied
into static input buffers (PyTorch's "whole network capture" recipe): a
few eager warm-up steps on a side stream first (they create
SGD's momentum buffers and run cuDNN's algorithm search outside the
capture), `zero_grad(set_to_none=True)` before capture so backward
allocates the static `.grad` tensors inside the graph's pool, fused SGD
with the learning rate in a device tensor (a Python float would be baked
into the captured kernels), clipping with foreach kernels and no host sync,
and bf16 autocast without a GradScaler (its step syncs). Nothing in the
step reads a value back to the host; losses are collected on the device
and read every few steps.

The warm-up and capture steps are real steps on real batches: capture
records the step without running it, so the captured batch is trained on
by an immediate replay. Dropout draws from the default CUDA generator,
whose state torch.cuda.graph registers itself; no other generator is used.

What ran is recorded, not assumed: `TrainStep.report()` says which mode was
asked for, which one ran (a capture that failed falls back to eager, and
says why), how many steps replayed the graph and how long compilation took.

`torch.compile` settings are named presets (`COMPILE_PRESETS`) of Inductor
options that matter for conv + BatchNorm training; the step is captured by
`TrainStep` itself, so no preset lets Inductor add CUDA graphs of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tpn.distributed import DistEnv, mean_over_ranks

log = logging.getLogger("tpn.engine")

INPUT_TO_NDHWC = "tpn.step.input_to_ndhwc"  # profiler label of the input's layout conversion
MIN_CUDNN = 91500  # cuDNN 9.8-9.14 computes bf16/fp16 3D convs wrongly (pytorch/pytorch#163539)
BROKEN_CUDNN = range(90800, 91500)


class LossModule(nn.Module):
    """Recognizer + losses in one `forward(x, y) -> loss`, so DDP's forward hooks see the step.

    loss = CE(logits, y) + aux_weight * CE(aux_logits, y) for models with a TPN auxiliary head.
    """

    def __init__(self, model: nn.Module, aux_weight: float) -> None:
        super().__init__()
        self.model = model
        self.aux_weight = aux_weight

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        logits, aux = self.model.forward_train(x)
        loss = F.cross_entropy(logits.float(), y)
        if aux is not None and self.aux_weight:
            loss = loss + self.aux_weight * F.cross_entropy(aux.float(), y)
        return loss


# name -> (torch.compile mode, extra Inductor options). A mode is expanded into its options
# (torch.compile takes one or the other), so presets can add to a mode.
COMPILE_PRESETS: dict[str, tuple[str | None, dict[str, Any]]] = {
    "default": (None, {}),  # Inductor's defaults
    "coordesc": (None, {"coordinate_descent_tuning": True}),  # tune each generated kernel's launch config
    "mm1x1": (None, {"conv_1x1_as_mm": True}),  # 1x1x1 convolutions as matmuls
    "autotune": ("max-autotune-no-cudagraphs", {}),  # + Triton conv/matmul templates; no Inductor graphs
    "autotune_mm1x1": ("max-autotune-no-cudagraphs", {"conv_1x1_as_mm": True}),
}
# What `--compile` without a preset uses; set from benchmarks.train's measurement on a GPU.
DEFAULT_COMPILE = "default"


def compile_preset(value: str | bool | None) -> str | None:
    """A `compile` setting as a COMPILE_PRESETS name or None (off); True / False, as settings saved before
    presets existed say, mean DEFAULT_COMPILE / off. ValueError names the presets."""
    if isinstance(value, bool):
        return DEFAULT_COMPILE if value else None
    if value is not None and value not in COMPILE_PRESETS:
        raise ValueError(f"unknown compile preset {value!r}; choose from {', '.join(COMPILE_PRESETS)}")
    return value


def compile_options(preset: str) -> dict[str, Any]:
    """The Inductor options of a preset (its mode expanded), as passed to torch.compile."""
    if compile_preset(preset) is None:
        raise ValueError(f"no compile preset given; choose from {', '.join(COMPILE_PRESETS)}")
    mode, extra = COMPILE_PRESETS[preset]
    if mode is None:
        return dict(extra)
    from torch._inductor import list_mode_options

    return {**list_mode_options(mode), **extra}


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    clip_grad: float | None = None  # max L2 norm of all gradients together; None = off
    amp_dtype: torch.dtype | None = None  # autocast dtype (bf16 on GPU); None = fp32
    channels_last: bool = False  # NDHWC activations and conv weights (3D models on GPU)
    cuda_graph: bool = True  # capture the step where possible
    compile: str | None = None  # a COMPILE_PRESETS name: torch.compile the forward + loss; True = DEFAULT_COMPILE
    warmup_iters: int = 3  # eager steps before capture (DDP needs >= 11)

    def __post_init__(self) -> None:
        object.__setattr__(self, "compile", compile_preset(self.compile))


def graph_unavailable(device: torch.device, opts: StepOptions) -> str | None:
    """Why the step cannot be captured (None = it can)."""
    if not opts.cuda_graph:
        return "CUDA graphs are turned off (--no-cuda-graph)"
    if device.type != "cuda":
        return f"CUDA graphs need a GPU; training on {device.type}"
    if opts.warmup_iters < 1:
        return "capture needs at least one eager warm-up step (SGD's momentum buffers)"
    return None


def cudnn_problem(version: int | None, amp: bool) -> str | None:
    """A warning for cuDNN versions with known-wrong or slow 3D half-precision convs."""
    if version is None or version >= MIN_CUDNN:
        return None
    msg = f"cuDNN {version} is older than 9.15 ({MIN_CUDNN})"
    if amp and version in BROKEN_CUDNN:
        return msg + ": its bf16 3D-conv kernels give wrong results; channels_last_3d is turned off"
    return msg + ": bf16 3D convs may be slow; upgrade to a build with cuDNN >= 9.15"


def build_optimizer(
    params: list[nn.Parameter], *, lr: float, momentum: float, nesterov: bool, weight_decay: float, device: torch.device
) -> torch.optim.SGD:
    """SGD as in the seed recipe; on a GPU fused, with the lr in a device tensor (graph-safe)."""
    if device.type == "cuda":
        lr_t = torch.tensor(lr, dtype=torch.float32, device=device)
        return torch.optim.SGD(
            params, lr=lr_t, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, fused=True
        )
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the rate in place: a device-tensor lr keeps its storage, which a captured graph reads."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], Tensor):
            group["lr"].fill_(lr)  # a kernel with the value as argument: no host sync
        else:
            group["lr"] = lr


def pin_device_lr(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """After `load_state_dict`, make each group's lr a fresh device tensor again (loading may swap it)."""
    if device.type != "cuda":
        return
    for group in optimizer.param_groups:
        group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


STEP_MODES = ("eager", "cuda-graph", "compiled", "compiled+cuda-graph")


def step_mode(compiled: bool, graph: bool) -> str:
    """The name of a step mode: one of STEP_MODES."""
    return STEP_MODES[int(graph) + 2 * int(compiled)]


@dataclass
class StepReport:
    """What the step asked for and what actually ran (a failed capture runs eagerly)."""

    requested: str  # a STEP_MODES name
    mode: str  # the mode of the latest step
    steps: int = 0
    graph_replays: int = 0  # steps run by replaying the captured graph
    eager_steps: int = 0  # steps run eagerly (warm-up, fallback, odd-shaped batches)
    fallback: str | None = None  # why a requested graph is not used
    compile: str | None = None  # COMPILE_PRESETS name
    compile_options: dict[str, Any] = field(default_factory=dict)
    compile_s: float | None = None  # wall time of the first (compiling) step, synchronised

    @property
    def fell_back(self) -> bool:
        """A requested graph is not used, for a reason (`fallback`). A run shorter than the
        warm-up also runs eagerly, but its graph was never due: that is no fallback."""
        return self.fallback is not None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainStep:
    """`step(x, y) -> loss` (a device tensor, detached); eager, or replayed from one CUDA graph."""

    def __init__(
        self, net: nn.Module, optimizer: torch.optim.Optimizer, opts: StepOptions, device: torch.device
    ) -> None:
        self.optimizer, self.opts, self.device = optimizer, opts, device
        self.params = [p for p in net.parameters() if p.requires_grad]
        options = compile_options(opts.compile) if opts.compile else {}
        # Compiled code is made during the eager warm-up steps, before any capture.
        self.net = torch.compile(net, options=options or None) if opts.compile else net
        self.graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[Tensor, Tensor, Tensor, list[Tensor | None]] | None = None
        self._warm = 0
        self._told: set[str] = set()
        reason = graph_unavailable(device, opts)
        self.capture_wanted = reason is None
        compiled = opts.compile is not None
        self.stats = StepReport(
            requested=step_mode(compiled, opts.cuda_graph),
            mode=step_mode(compiled, False),
            fallback=reason if opts.cuda_graph else None,
            compile=opts.compile,
            compile_options=options,
        )
        if reason and opts.cuda_graph:
            self._log_once(f"running the training step eagerly: {reason}")

    @property
    def mode(self) -> str:
        return self.stats.mode

    def report(self) -> StepReport:
        return self.stats

    def _log_once(self, msg: str) -> None:
        if msg not in self._told:
            self._told.add(msg)
            log.info(msg)

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.opts.amp_dtype
        if dtype is None:
            return contextlib.nullcontext()
        # No weight-cast cache: its tensors would outlive the capture that made them.
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    def _step(self, x: Tensor, y: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self.net(x, y)
        loss.backward()
        if self.opts.clip_grad:
            # foreach on GPU: the norm and the scaling stay on the device (no sync)
            foreach = True if self.device.type == "cuda" else None
            torch.nn.utils.clip_grad_norm_(self.params, self.opts.clip_grad, foreach=foreach)
        self.optimizer.step()
        return loss.detach()

    def _prepare(self, x: Tensor) -> Tensor:
        if self.opts.channels_last and x.dim() == 5:
            # named, so a profile tells this one conversion of the loader's NCDHW batch from the model's copies
            with torch.profiler.record_function(INPUT_TO_NDHWC):
                return x.contiguous(memory_format=torch.channels_last_3d)
        return x

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        self.stats.steps += 1
        if self.stats.compile and self.stats.compile_s is None:
            return self._timed_first_step(x, y)
        return self._dispatch(x, y)

    def _dispatch(self, x: Tensor, y: Tensor) -> Tensor:
        if self.graph is not None:
            return self._replay(x, y)  # copy_ into the NDHWC buffer converts the layout itself
        x = self._prepare(x)
        if self.capture_wanted and self._warm >= self.opts.warmup_iters:
            return self._capture(x, y)
        self.stats.eager_steps += 1
        if not self.capture_wanted:
            return self._step(x, y)
        self._warm += 1
        return self._side_stream_step(x, y)

    def _timed_first_step(self, x: Tensor, y: Tensor) -> Tensor:
        """The first compiled step compiles forward and backward: time it (one sync, once)."""
        t0 = time.perf_counter()
        loss = self._dispatch(x, y)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.stats.compile_s = time.perf_counter() - t0
        log.info("compiled the training step (preset %r) in %.1f s", self.stats.compile, self.stats.compile_s)
        return loss

    def _side_stream_step(self, x: Tensor, y: Tensor) -> Tensor:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            loss = self._step(x, y)
        torch.cuda.current_stream(self.device).wait_stream(side)
        return loss

    def _capture(self, x: Tensor, y: Tensor) -> Tensor:
        static_x = x.clone(memory_format=torch.preserve_format)
        static_y = y.clone()
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        try:
            # thread_local: the loader's decoding threads keep using CUDA during capture
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                static_loss = self._step(static_x, static_y)
        except RuntimeError as e:
            return self._fall_back(f"CUDA graph capture failed ({e})", x, y)
        # Keep the static grads referenced: the graph writes them on every replay.
        self._static = (static_x, static_y, static_loss, [p.grad for p in self.params])
        self.graph = graph
        self.stats.mode = step_mode(self.stats.compile is not None, True)
        log.info("captured the training step in a CUDA graph (batch %s)", tuple(x.shape))
        graph.replay()  # capture only recorded the step: now run it on this batch
        self.stats.graph_replays += 1
        return static_loss.clone()

    def _fall_back(self, reason: str, x: Tensor, y: Tensor) -> Tensor:
        """Give up on the graph for good; this and every later step run eagerly."""
        self.capture_wanted = False
        self.stats.fallback = reason
        log.warning("%s; running the training step eagerly", reason)
        self.stats.eager_steps += 1
        return self._step(x, y)

    def _replay(self, x: Tensor, y: Tensor) -> Tensor:
        static_x, static_y, static_loss, _ = self._static
        if x.shape != static_x.shape or y.shape != static_y.shape:
            self._log_once(
                f"batch shape {tuple(x.shape)} differs from the captured {tuple(static_x.shape)}: running it eagerly"
            )
            self.stats.eager_steps += 1
            return self._step(self._prepare(x), y)
        static_x.copy_(x, non_blocking=True)
        static_y.copy_(y, non_blocking=True)
        self.graph.replay()
        self.stats.graph_replays += 1
        return static_loss.clone()  # the next replay overwrites static_loss


class LossLog:
    """Per-step losses kept on the device and read back in one transfer (no per-step sync).

    Holds up to `capacity` losses; the trainer drains it when that many are pending.
    """

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.buf = torch.zeros(max(1, capacity), dtype=torch.float32, device=device)
        self.meta: list[tuple[int, int, float]] = []  # (step, epoch, lr)

    def __len__(self) -> int:
        return len(self.meta)

    def add(self, loss: Tensor, step: int, epoch: int, lr: float) -> None:
        self.buf[len(self.meta)].copy_(loss)
        self.meta.append((step, epoch, lr))

    def drain(self, env: DistEnv) -> list[dict]:
        """One record per step with the loss averaged over ranks; every rank must call it."""
        n = len(self.meta)
        if n == 0:
            return []
        values = mean_over_ranks(self.buf[:n].clone(), env).tolist()  # the only host sync
        records = [
            {"type": "train", "step": s, "epoch": e, "lr": lr, "loss": v} for (s, e, lr), v in zip(self.meta, values)
        ]
        self.meta.clear()
        return records
