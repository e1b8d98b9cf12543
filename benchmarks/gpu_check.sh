#!/usr/bin/env bash
# The GPU benchmarks in one run (about 5 minutes on one GPU; each part has its own time limit):
#   1. feature extraction against the bare forward, fp32 and bf16 autocast, with the K = 100
#      overclustering mIoU of each cache (the effect of bf16 on the result);
#   2. one Leopart step by component, fp32, bf16 and fp16 mixed precision;
#   3. STEGO training steps on cached features, 32-true against bf16-mixed;
#   4. the clustering protocol on CamVid val (K = 11 and 100, 5 seeds).
# Prints the same tables as the CPU benchmarks. Exits 2, before any work, when no CUDA device
# is visible. Run from the repository root: `bash benchmarks/gpu_check.sh [CAMVID_ROOT]`.
set -euo pipefail

ROOT=${1:-../shared/data/camvid}
PY=${PYTHON:-.venv/bin/python}
STEGO_STEPS=${STEGO_STEPS:-300}

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu_check: no CUDA device is visible to torch (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset});" \
         "this script measures the GPU only: run the CPU benchmarks with 'make bench'" >&2
    exit 2
fi
if [ ! -d "$ROOT" ]; then
    echo "gpu_check: CamVid folder $ROOT not found; pass it as the first argument" >&2
    exit 2
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export UNSEG_CACHE="$WORK/cache"  # a fresh cache: every part extracts (and times) on this GPU

section() {  # section TITLE LIMIT_S COMMAND...: run with a time limit and print its wall time
    local title=$1 limit=$2
    shift 2
    echo
    echo "== $title"
    local start=$SECONDS status=0
    timeout "$limit" "$@" || status=$?
    echo "-- $title: $((SECONDS - start)) s$([ "$status" -eq 0 ] || echo ", exit status $status")"
}

"$PY" - <<'EOF'
import platform, torch
p = torch.cuda.get_device_properties(0)
print(f"# {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"{platform.processor() or platform.machine()}")
EOF

section "extraction fp32 (camvid val)" 90 \
    "$PY" benchmarks/bench_features.py --root "$ROOT" --device cuda --precision fp32 --repeats 3
section "extraction bf16 autocast (camvid val)" 90 \
    "$PY" benchmarks/bench_features.py --root "$ROOT" --device cuda --precision bf16 --repeats 3

for precision in 32 bf16 16; do
    section "Leopart step, precision $precision" 60 \
        "$PY" benchmarks/bench_leopart.py --root "$ROOT" --device cuda --precision "$precision" --steps 5
done

# STEGO: extract train + val once, then time the same number of steps in each precision
section "features for STEGO (camvid train, val)" 60 \
    "$PY" -m unseg extract --dataset camvid --root "$ROOT" --split train val --device cuda
for precision in 32-true bf16-mixed; do
    section "STEGO $STEGO_STEPS steps on cached features, precision $precision" 60 \
        "$PY" -m unseg train stego --config camvid_effnet "root=$ROOT" "max_steps=$STEGO_STEPS" accelerator=gpu \
        "precision=$precision" --no-eval --out "$WORK/stego-$precision"
done

section "clustering protocol (camvid val, K 11 and 100, 5 seeds)" 120 \
    "$PY" -m unseg eval cluster --dataset camvid --root "$ROOT" --k 11 100 --seeds 5 --device cuda
