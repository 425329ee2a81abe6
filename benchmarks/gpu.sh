#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the environment check, the GPU tests, the benchmarks on
# the GPU paths, and a real training + test run (GPU loader, CUDA-graph step) on synthetic shards.
#
#   benchmarks/gpu.sh OUT [STAGE ...]
#
# Stages (default: all, in this order): env tests train infer data feed variants trainrun export demo.
#
# `export` measures the inference goals on the GPU in one stage: ONNX Runtime's CUDA provider (a smoke
# test, then benchmarks.infer on tpn_r50_f8s8 at batch 1/8/32: PyTorch fp32/bf16, ORT-CUDA FP32 and
# FP16, TensorRT FP16 when importable) and the FP16 top-1 agreement on the benchmark's clips. It uses
# the weights of the trainrun stage (CKPT=FILE to choose others; random weights otherwise, and then the
# agreement is flagged as meaningless) and the data stage's shards (VAL_SHARDS=DIR to choose others).
# It needs onnxruntime-gpu, which the GPU image lacks: carry it as wheels with the default set, e.g.
#   ../shared/tools/device-wheels nvidia-dali-cuda130==2.4.0 nvidia-nvimgcodec-cu13 nvidia-nvjpeg \
#     nvidia-libnvcomp-cu13==5.3.0.16 astunparse gast optree nvtx makefun libcst onnxruntime-gpu==1.31.1
# (onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9, as torch cu130 there; its wheel is ~250 MB,
# so about four more parts). With /tmp/site first on PYTHONPATH its `onnxruntime` shadows the CPU one.
# Logs go to OUT/<stage>.log, benchmark results to OUT/results/ (the same files `python -m benchmarks`
# writes), the training run to OUT/run/ (on the shards the data stage made). Each stage has its own time limit; a failed stage is
# reported and the next one still runs. With GPU_ARCHIVE=FILE.tgz, OUT is packed into FILE after
# every stage, so a run cut short still leaves what it measured.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu.sh OUT [STAGE ...]}
shift
STAGES=${*:-env tests train infer data feed variants trainrun export demo}
PY=${PYTHON:-python3}
DATA=/tmp/tpn-bench-data-grain  # where benchmarks.data caches its shards (shards-vp9, shards-jpeg)
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export TPN_BENCH_RESULTS=$OUT/results
status=0

stage() {  # stage NAME SECONDS CMD...
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log"
  echo "== $name: exit $rc after $((SECONDS - t0))s"
  echo "$name $rc $((SECONDS - t0))" >>"$OUT/stages.txt"
  [ "$rc" -eq 0 ] || status=1
  if [ -n "${GPU_ARCHIVE:-}" ]; then
    tar -czf "$GPU_ARCHIVE.tmp" --exclude='*.pth' -C "$(dirname "$OUT")" "$(basename "$OUT")" && mv "$GPU_ARCHIVE.tmp" "$GPU_ARCHIVE"
  fi
}

env_check() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  "$PY" - <<'EOF'
import torch
from tpn.engine import MIN_CUDNN
v = torch.backends.cudnn.version()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {v}, {torch.cuda.get_device_name()}")
assert v is not None and v >= MIN_CUDNN, f"cuDNN {v} < {MIN_CUDNN}: bf16 3D convs are unreliable with it"
import nvidia.dali
print("DALI", nvidia.dali.__version__)
EOF
}

# The training stage: the GPU tests of the BatchNorm and layout work, every benchmarks.train row with
# the profiles of the uncompiled and compiled steps, every compile preset, batch 32 and cuDNN's algorithm
# limit, within TRAIN_BUDGET_S seconds (default 470: one device call of ~8 minutes). Cold compiles run
# first, in parallel (one process per preset, TORCHINDUCTOR_COMPILE_THREADS each), and fill Inductor's
# caches, so the timed runs load their compiled code; their JSON records the cold compile times. Parts
# run in order of importance; one that no longer fits the budget is skipped and listed as such.
train_precompile() {  # DAY: one compile-only process per preset (and the default preset at batch 32)
  local day=$1 pids=() p
  for p in default coordesc mm1x1 autotune; do
    "$PY" -m benchmarks.train --compile-only --modes "bf16-cl3d-compile=$p-graph" --name "$day-train-compile-$p" \
      >"$OUT/train-compile-$p.log" 2>&1 &
    pids+=($!)
  done
  "$PY" -m benchmarks.train --compile-only --batch 32 --modes bf16-cl3d-compile-graph --name "$day-train-compile-b32" \
    >"$OUT/train-compile-b32.log" 2>&1 &
  pids+=($!)
  local rc=0
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  tail -n 3 "$OUT"/train-compile-*.log
  return $rc
}

train_stage() {
  local t0=$SECONDS budget=${TRAIN_BUDGET_S:-470} day presets=() profiles=() p
  day="$(date +%F)-$("$PY" -c 'from benchmarks.__main__ import device_slug; print(device_slug())')"
  export TORCHINDUCTOR_COMPILE_THREADS=${TORCHINDUCTOR_COMPILE_THREADS:-4}  # one value for every run: same cache keys
  export -f train_precompile; export PY OUT
  fits() {  # fits NAME LIMIT: the stage's limit, cut to what is left of the budget, or skip it
    local left=$((budget - (SECONDS - t0)))
    if [ "$left" -lt 40 ]; then echo "$1 skipped (training budget ${budget}s spent)" | tee -a "$OUT/stages.txt"; return 1; fi
    LIMIT=$(($2 < left ? $2 : left))
  }
  fits train-tests 60 && stage train-tests "$LIMIT" "$PY" -m pytest -q -m gpu -p no:cacheprovider \
    tests/tpn/test_batchnorm.py tests/tpn/test_train_layout.py
  fits train-compile 150 && stage train-compile "$LIMIT" bash -c "train_precompile $day"
  fits train 210 && stage train "$LIMIT" "$PY" -m benchmarks.train --name "$day-train" \
    --modes fp32-eager bf16-cl3d-nativebn bf16-cl3d bf16-cl3d-graph bf16-cl3d-bneval-graph bf16-cl3d-compile-graph \
    --profile bf16-cl3d-nativebn bf16-cl3d-graph bf16-cl3d-compile-graph
  for p in coordesc mm1x1 autotune; do  # presets whose cold compile finished (the others would compile cold here)
    if [ -f "$OUT/results/$day-train-compile-$p.json" ]; then presets+=("$p"); profiles+=("bf16-cl3d-compile=$p-graph"); fi
  done
  if [ ${#presets[@]} -eq 0 ]; then
    echo "train-presets skipped (no preset's cold compile finished)" | tee -a "$OUT/stages.txt"
  elif fits train-presets 110; then
    stage train-presets "$LIMIT" "$PY" -m benchmarks.train --name "$day-train-presets" \
      --modes fp32-eager bf16-cl3d-compile-graph --compile-presets "${presets[@]}" --rounds 3 --profile "${profiles[@]}"
  fi
  fits train-b32 80 && stage train-b32 "$LIMIT" "$PY" -m benchmarks.train --name "$day-train-b32" --batch 32 \
    --modes fp32-eager bf16-cl3d-graph bf16-cl3d-compile-graph --rounds 3 --steps 5
  fits train-cudnn 50 && stage train-cudnn "$LIMIT" "$PY" -m benchmarks.train --name "$day-train-cudnn0" \
    --cudnn-benchmark-limit 0 --modes fp32-eager bf16-cl3d-graph --rounds 3 --steps 5
  return 0
}

export_check() {  # the inference goals on the GPU; see the header
  "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/export/test_runtime_gpu.py || return 1
  local ckpt=${CKPT:-$OUT/run/best.pth} shards=${VAL_SHARDS:-$DATA/shards-jpeg}
  local slug; slug=$("$PY" -c 'from benchmarks.__main__ import device_slug; print(device_slug())')
  local args=(--models tpn_r50_f8s8 --batches 1 8 32 --name "$(date +%F)-$slug-infer-export")
  [ -f "$ckpt" ] && args+=(--checkpoint "$ckpt") || echo "no checkpoint at $ckpt: random weights"
  # the trainrun stage's shards (one training split): their clips stand in for validation clips
  [ -d "$shards" ] && args+=(--val-shards "$shards" --split all --val-videos 128) || echo "no shards at $shards"
  "$PY" -m benchmarks.infer "${args[@]}"
}

for s in $STAGES; do
  case $s in
    env) export -f env_check; export PY; stage env 120 bash -c env_check ;;
    tests) stage tests 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/pipeline/test_loader.py \
             tests/tpn/test_train_engine.py tests/export/test_trt.py tests/export/test_runtime_gpu.py ;;
    # one report per day and device: each --only run joins the report in OUT/results
    train) train_stage ;;
    infer|data|feed) stage "$s" 360 "$PY" -m benchmarks --only "$s" --results "$OUT/results" ;;
    variants) stage variants 300 "$PY" -m benchmarks.loader_variants \
                --name "$(date +%F)-$("$PY" -c 'from benchmarks.__main__ import device_slug; print(device_slug())')-loader_variants" ;;
    # the benchmark shards hold one (train) split: validation and test read every shard of it
    trainrun) stage trainrun 420 "$PY" -m tpn.train tpn_r50_f8s8 --train "$DATA/shards-jpeg" --val "$DATA/shards-jpeg" \
                --val-split all --out "$OUT/run" --epochs 2 --batch-size 16 --no-progress
              stage testrun 300 "$PY" -m tpn.test tpn_r50_f8s8 --checkpoint "$OUT/run/best.pth" \
                --shards "$DATA/shards-jpeg" --split all --out "$OUT/run/test.json" ;;
    export) export -f export_check; export PY OUT DATA; stage export 540 bash -c export_check ;;
    demo) stage demo 420 "$PY" -m tpn.demo --size smoke --out /tmp/tpn-demo-gpu ;;
    *) echo "unknown stage $s (env tests train infer data feed variants trainrun export demo)"; status=2 ;;
  esac
done
cat "$OUT/stages.txt"
exit $status
