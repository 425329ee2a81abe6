"""GPU diagnostics behind two findings (run on a GPU: `python -m benchmarks.gpu_diag`).

1. Eager vs CUDA-graph training steps of the tiny TPN at two learning rates, with
   a second eager run as the run-to-run reference: how far apart the losses and
   weights drift, step by step (TF32 off, deterministic cuDNN).
2. A profile of three bf16 + channels_last_3d eager steps of tpn_r50_f8s8 at
   batch 16: the 25 CUDA kernels with the most time.

Output as of 2026-11-25 on an H100: benchmarks/results/2026-11-25-h100-gpu_diag.txt.
"""

import copy

import torch

import tpn
from tpn.engine import LossModule, StepOptions, TrainStep, build_optimizer, set_lr
from tests.test_train_engine import tiny_batch, flat_params


def main() -> None:
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    base = tpn.create_model("tpn_tiny_f8s4", dropout=0.0)
    base.neck.aux_head.dropout.p = 0.0

    def run(graph, lr0, steps=6, clip=40.0):
        model = copy.deepcopy(base).to(dev)
        opt = build_optimizer(
            list(model.parameters()), lr=lr0, momentum=0.9, nesterov=True, weight_decay=1e-4, device=dev
        )
        step = TrainStep(
            LossModule(model, 0.5), opt, StepOptions(clip_grad=clip, cuda_graph=graph, warmup_iters=2), dev
        )
        losses, params = [], []
        for i in range(steps):
            set_lr(opt, lr0 / (i + 1))
            x, y = tiny_batch(4, seed=i)
            losses.append(step(x.to(dev), y.to(dev)))
            params.append(flat_params(model).clone())
        return torch.stack(losses).cpu(), [p.cpu() for p in params], step.mode

    for lr0 in (0.05, 0.005):
        a, b, g = run(False, lr0), run(False, lr0), run(True, lr0)
        print(f"lr {lr0}: modes {a[2]} {g[2]}")
        print("  eager losses", [round(v, 5) for v in a[0].tolist()])
        print("  graph losses", [round(v, 5) for v in g[0].tolist()])
        for i in range(6):
            ee = (a[1][i] - b[1][i]).abs().max().item()
            ge = (a[1][i] - g[1][i]).abs().max().item()
            print(f"  after step {i}: max|param| eager-vs-eager {ee:.3g}  graph-vs-eager {ge:.3g}")
    # no clipping
    a, g = run(False, 0.05, clip=None), run(True, 0.05, clip=None)
    print("noclip eager", [round(v, 5) for v in a[0].tolist()])
    print("noclip graph", [round(v, 5) for v in g[0].tolist()])

    # profile one bf16 cl3d step of tpn_r50_f8s8 (by category: python -m benchmarks.train --profile MODE)
    from benchmarks.train import make_contender

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.allow_tf32 = True
    fn = make_contender("tpn_r50_f8s8", "bf16-cl3d", dev, 16)
    for _ in range(4):
        fn()
    torch.cuda.synchronize()
    from torch.profiler import profile, ProfilerActivity

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(3):
            fn()
        torch.cuda.synchronize()
    ka = prof.key_averages()
    for key in ("self_device_time_total", "self_cuda_time_total"):
        try:
            print(ka.table(sort_by=key, row_limit=25, max_name_column_width=90))
            break
        except Exception as e:
            print("sort key", key, "failed:", e)


if __name__ == "__main__":
    main()
