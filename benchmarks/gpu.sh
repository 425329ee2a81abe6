#!/usr/bin/env bash
# Everything that needs a GPU, in one go: the environment check, the GPU tests, the benchmarks on
# the GPU paths, and a real training + test run (GPU loader, CUDA-graph step) on synthetic shards.
#
#   benchmarks/gpu.sh OUT [STAGE ...]
#
# Stages (default: all, in this order): env tests train infer data pipeline variants trainrun demo.
# Logs go to OUT/<stage>.log, benchmark results to OUT/results/ (the same files `python -m benchmarks`
# writes), the training run to OUT/run/ (on the shards the data stage made). Each stage has its own time limit; a failed stage is
# reported and the next one still runs. With GPU_ARCHIVE=FILE.tgz, OUT is packed into FILE after
# every stage, so a run cut short still leaves what it measured.
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu.sh OUT [STAGE ...]}
shift
STAGES=${*:-env tests train infer data pipeline variants trainrun demo}
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

for s in $STAGES; do
  case $s in
    env) export -f env_check; export PY; stage env 120 bash -c env_check ;;
    tests) stage tests 240 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_loader.py \
             tests/test_train_engine.py tests/test_export_trt.py ;;
    # one report per day and device: each --only run joins the report in OUT/results
    train|infer|data|pipeline) stage "$s" 360 "$PY" -m benchmarks --only "$s" --results "$OUT/results" ;;
    variants) stage variants 300 "$PY" -m benchmarks.loader_variants \
                --name "$(date +%F)-$("$PY" -c 'from benchmarks.__main__ import device_slug; print(device_slug())')-loader_variants" ;;
    trainrun) stage trainrun 420 "$PY" -m tpn.train tpn_r50_f8s8 --train "$DATA/shards-jpeg" --val "$DATA/shards-jpeg" \
                --out "$OUT/run" --epochs 2 --batch-size 16 --no-progress
              stage testrun 300 "$PY" -m tpn.test tpn_r50_f8s8 --checkpoint "$OUT/run/best.pth" \
                --shards "$DATA/shards-jpeg" --out "$OUT/run/test.json" ;;
    demo) stage demo 420 "$PY" -m tpn.demo --size smoke --out /tmp/tpn-demo-gpu ;;
    *) echo "unknown stage $s (env tests train infer data pipeline variants trainrun demo)"; status=2 ;;
  esac
done
cat "$OUT/stages.txt"
exit $status
