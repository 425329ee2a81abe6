"""`python -m tpn.demo`: the whole toolkit end to end on the built-in synthetic dataset.

synth -> shard -> verify -> train (a tiny TPN and a tiny baseline) -> test
-> ONNX export -> FP16 ONNX + TensorRT -> Top-1 gates, then one summary
table. Every stage is the same command a user would type (it is printed
before it runs), so the demo doubles as a walkthrough. A stage that finished
before is skipped on a re-run; `--fresh` starts over.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tpn.io import atomic_write_json

MODELS = ("tpn_tiny_f8s4", "baseline_tiny_f8s4")
EXPORTED = MODELS[0]
SIZES = {  # videos per class (train, val), epochs
    "default": dict(train=24, val=8, epochs=12),
    "smoke": dict(train=2, val=1, epochs=1),
}


@dataclass
class Stage:
    name: str
    argv: list[str]
    ok_codes: tuple[int, ...] = (0,)
    note: str = ""  # what an accepted non-zero exit means


@dataclass
class StageResult:
    name: str
    command: str
    returncode: int
    seconds: float
    skipped: bool = False
    note: str = ""


@dataclass
class DemoPaths:
    root: Path
    data: Path = field(init=False)
    shards: Path = field(init=False)
    runs: Path = field(init=False)
    export: Path = field(init=False)
    state: Path = field(init=False)

    def __post_init__(self) -> None:
        self.data, self.shards = self.root / "data", self.root / "shards"
        self.runs, self.export = self.root / "runs", self.root / "export"
        self.state = self.root / ".stages"

    def run(self, model: str) -> Path:
        return self.runs / model

    def onnx(self, fp16: bool = False) -> Path:
        return self.export / f"{EXPORTED}{'.fp16' if fp16 else ''}.onnx"


def py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def plan(p: DemoPaths, size: str, seed: int) -> list[Stage]:
    """The demo's commands, in order (a pure function of the settings)."""
    s = SIZES[size]
    stages = [
        Stage("synth", py("pipeline.synth", str(p.data), "--train-per-class", str(s["train"]),
                          "--val-per-class", str(s["val"]), "--seed", str(seed))),
        Stage("shard", py("pipeline.shard", str(p.data), "--out", str(p.shards), "--short-side", "keep")),
        Stage("verify", py("pipeline.verify", str(p.shards))),
    ]  # fmt: skip
    for m in MODELS:
        stages.append(Stage(f"train {m}", py(
            "tpn.train", m, "--train", str(p.shards), "--val", str(p.shards), "--out", str(p.run(m)),
            "--epochs", str(s["epochs"]), "--seed", str(seed),
        )))  # fmt: skip
    for m in MODELS:
        stages.append(Stage(f"test {m}", py(
            "tpn.test", m, "--checkpoint", str(p.run(m) / "best.pth"), "--shards", str(p.shards),
            "--out", str(p.run(m) / "test.json"),
        )))  # fmt: skip
    ckpt = str(p.run(EXPORTED) / "best.pth")
    gate = ["--model", EXPORTED, "--checkpoint", ckpt, "--val-shards", str(p.shards), "--split", "val"]
    # export.trt redoes the ONNX step, then calibrates the FP16 ONNX on validation clips; the gates
    # run last so that no later export replaces a gated file.
    stages += [
        Stage("export onnx", py("export.onnx", EXPORTED, "--checkpoint", ckpt, "--out", str(p.export), "--size", "test")),
        Stage("export trt", py("export.trt", EXPORTED, "--checkpoint", ckpt, "--out", str(p.export),
                               "--val-shards", str(p.shards), "--split", "val"),
              ok_codes=(0, 2), note="TensorRT not available: ONNX and FP16 ONNX kept, no engine built"),
        Stage("gate onnx", py("export.validate", str(p.onnx()), *gate)),
        Stage("gate fp16", py("export.validate", str(p.onnx(fp16=True)), *gate)),
    ]  # fmt: skip
    return stages


def stage_key(stage: Stage) -> str:
    return stage.name.replace(" ", "_")


def run_stage(stage: Stage, p: DemoPaths, index: int, total: int) -> StageResult:
    command = shlex.join(stage.argv).replace(sys.executable, "python")
    marker = p.state / f"{stage_key(stage)}.json"
    print(f"\n[{index}/{total}] {stage.name}\n$ {command}", flush=True)
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("command") == command and done.get("returncode") in stage.ok_codes:
            print("  done before: reusing its outputs (--fresh to redo)")
            return StageResult(**{**done, "skipped": True})
    t0 = time.perf_counter()
    rc = subprocess.run(stage.argv).returncode
    result = StageResult(stage.name, command, rc, time.perf_counter() - t0)
    if rc in stage.ok_codes:
        result.note = stage.note if rc else ""
        atomic_write_json(asdict(result), marker)
    return result


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def model_rows(p: DemoPaths, chance: float) -> tuple[list[str], dict[str, float]]:
    rows = ["| model | val Top-1 (test protocol) | Top-5 | best val Top-1 while training | train time | train clips/s |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    top1 = {}
    for m in MODELS:
        train, test = read_json(p.run(m) / "summary.json") or {}, read_json(p.run(m) / "test.json") or {}
        if test.get("top1") is not None:
            top1[m] = test["top1"]
        rows.append(
            f"| {m} | {_pct(test.get('top1'))} | {_pct(test.get('top5'))} | {_pct(train.get('best_top1'))} "
            f"| {train.get('train_time_s', 0):.0f} s | {train.get('clips_per_s', 0):.1f} |"
        )
    rows.append(f"\nchance level: {100 * chance:.1f}%")
    return rows, top1


def verdict(top1: dict[str, float], chance: float) -> str:
    """An honest sentence on whether TPN beat the baseline (or anything beat chance)."""
    if len(top1) < len(MODELS):
        return "Not every model was tested; see the stage list above."
    tpn_acc, base_acc = top1[MODELS[0]], top1[MODELS[1]]
    if max(tpn_acc, base_acc) < 2 * 100 * chance:
        return f"Neither model got far above chance ({100 * chance:.1f}%): train longer (--epochs) or check the data."
    if tpn_acc > base_acc:
        return f"TPN beat the baseline by {tpn_acc - base_acc:.1f} points on this synthetic set."
    return (
        f"TPN did NOT beat the baseline here ({tpn_acc:.1f}% vs {base_acc:.1f}%): on this small synthetic "
        "set a short tiny-model run does not show the paper's gain."
    )


def export_rows(p: DemoPaths) -> list[str]:
    rows = ["| artifact | backend | Top-1 | PyTorch FP32 Top-1 | drop (points) | same prediction | gate |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for art in (p.onnx(), p.onnx(fp16=True)):
        g = (read_json(Path(f"{art}.gate.json")) or {}).get("gate")
        if g is None:
            rows.append(f"| {art.name} | - | - | - | - | - | not run |")
            continue
        agree = g.get("prediction_agreement")
        rows.append(
            f"| {art.name} | {g['backend']} ({g['precision']}) | {_pct(g.get('artifact_top1'))} | "
            f"{_pct(g.get('torch_top1'))} | {g.get('drop') if g.get('drop') is not None else '-'} | "
            f"{'-' if agree is None else f'{100 * agree:.1f}%'} | {'passed' if g['passed'] else 'FAILED'} |"
        )
    engines = sorted(p.export.glob("*.engine"))
    rows.append(f"\nTensorRT engine: {engines[0] if engines else 'not built (TensorRT or a GPU is not available here)'}")
    return rows


def summary(p: DemoPaths, results: list[StageResult]) -> str:
    classes = read_json(p.shards / "classes.json") or []
    chance = 1 / max(1, len(classes))
    lines = ["", "=" * 72, "tpn demo: summary", "=" * 72, "", "Stages:", "| stage | exit | time |", "|---|---|---|"]
    for r in results:
        status = "reused" if r.skipped else f"{r.returncode}"
        lines.append(f"| {r.name} | {status}{' (' + r.note + ')' if r.note else ''} | {r.seconds:.1f} s |")
    mrows, top1 = model_rows(p, chance)
    lines += ["", "Models (synthetic validation videos):", *mrows, "", verdict(top1, chance)]
    lines += ["", f"Exported {EXPORTED} (Top-1 gate on the validation shards):", *export_rows(p)]
    lines += ["", "Outputs:", f"  data    {p.data}", f"  shards  {p.shards}", f"  runs    {p.runs}",
              f"  export  {p.export}"]  # fmt: skip
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tpn.demo",
        description="Run the whole toolkit on the built-in synthetic dataset: synth, shard, verify, train a tiny "
        "TPN and a tiny baseline, test, export to ONNX / FP16 / TensorRT and gate the exports on Top-1.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="working folder (default: demo_out)")
    parser.add_argument("--size", choices=sorted(SIZES), default="default",
                        help="'default' (24 train / 8 val videos per class, 12 epochs) or 'smoke' (2 / 1 videos per class, "
                             "1 epoch: only proves the flow)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed for the data and the training runs (default: 0)")
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing finished ones")
    parser.add_argument("--dry-run", action="store_true", help="print the commands without running them")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    p = DemoPaths(args.out)
    stages = plan(p, args.size, args.seed)
    if args.dry_run:
        print("\n".join(shlex.join(s.argv).replace(sys.executable, "python") for s in stages))
        return 0
    if args.fresh:
        for marker in p.state.glob("*.json"):
            marker.unlink()
    results = []
    for i, stage in enumerate(stages, 1):
        r = run_stage(stage, p, i, len(stages))
        results.append(r)
        if r.returncode not in stage.ok_codes:
            print(summary(p, results))
            print(f"\nstage '{stage.name}' failed with exit code {r.returncode}; fix it and re-run (finished stages are reused)")
            return 1
    print(summary(p, results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
