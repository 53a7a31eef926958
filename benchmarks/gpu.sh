#!/usr/bin/env bash
# The GPU figures of BENCHMARKS.md in one device call of at most 9 minutes (issue 18):
#   1. the `fashion-mnist` recipe under a 5-minute time limit (its own is 570 s: the call has 9 minutes in all),
#   2. `python -m vitlib.bench --device cuda --dtype bf16`, without and with --compile (ratios to timm, MFU),
#   3. a short `mnist` run (90 s).
# Everything it prints goes to $OUT: device.txt, steps.log and one log per step (a run's last line is its JSON).
#
#   bash benchmarks/gpu.sh --prepare    here: copy the data the device machine lacks into .device-data/
#   bash benchmarks/gpu.sh              there: the device tool's `run`, with carry [".device-data"]
#   bash benchmarks/gpu.sh --dry-run    here, on the CPU: every step, a few iterations each (tests/test_bench.py)
#
# The device machine has its own python3 with PyTorch, torchvision and timm; vitlib is used from this
# checkout (PYTHONPATH), not installed. Nothing there can be downloaded: the data travels in .device-data/.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-run}
DATA=$PWD/.device-data
PY=${PYTHON:-python3}

if [ "$mode" = "--prepare" ]; then
    mkdir -p "$DATA"
    cp -r /usr/share/datasets/fashion-mnist "$DATA/" 2>/dev/null \
        || { echo "no Fashion-MNIST in /usr/share/datasets: sudo apt-get install dataset-fashion-mnist" >&2; exit 2; }
    cp -r ../shared/data/mnist "$DATA/" 2>/dev/null \
        || { echo "no MNIST in ../shared/data/mnist: the GPU script then skips its MNIST run" >&2; }
    chmod -R u+w "$DATA"
    du -sh "$DATA"
    exit 0
fi

OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 VITLIB_DATA=${VITLIB_DATA:-$DATA}
runs=$(mktemp -d)  # checkpoints stay on the machine: only logs come back
if [ "$mode" = "--dry-run" ]; then
    device=cpu
    # the bundled subset: the dry run checks the plumbing, on any machine, with no data of its own
    fmnist=(--dataset fashion-mnist-small --epochs 1 --subset 512 --batch-size 64 --no-compile --time-limit 60)
    mnist=(--dataset fashion-mnist-small --epochs 1 --subset 256 --batch-size 64 --no-compile --time-limit 30)
    bench=(--case course_28 --rounds 1 --iterations 2 --batch-size 8)
    compile_bench=${DRY_RUN_COMPILE:-1}
elif [ "$mode" = "run" ]; then
    device=cuda
    fmnist=(--time-limit 300)
    mnist=(--time-limit 90)
    bench=()
    compile_bench=1
else
    echo "usage: bash benchmarks/gpu.sh [--prepare | --dry-run]" >&2
    exit 2
fi

step() {  # step NAME COMMAND...: its output in $OUT/NAME.log; a failing step is recorded, the next one still runs
    local name=$1
    shift
    echo "$(date -u +%FT%TZ) start $name: $*" >>"$OUT/steps.log"
    local start=$SECONDS status=0
    "$@" >"$OUT/$name.log" 2>&1 || status=$?
    echo "$(date -u +%FT%TZ) end   $name: exit $status after $((SECONDS - start)) s" >>"$OUT/steps.log"
    return 0
}

{
    date -u +%FT%TZ
    nvidia-smi 2>/dev/null || echo "nvidia-smi: none (no NVIDIA GPU here)"
    "$PY" -c "import sys, torch; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
} >"$OUT/device.txt" 2>&1

step fashion-mnist "$PY" -m vitlib.train --recipe fashion-mnist --device "$device" --out "$runs/fashion-mnist" --no-progress "${fmnist[@]}"
step bench-bf16 "$PY" -m vitlib.bench --device "$device" --dtype bf16 "${bench[@]}"
if [ "$compile_bench" = 1 ]; then
    step bench-bf16-compile "$PY" -m vitlib.bench --device "$device" --dtype bf16 --compile "${bench[@]}"
fi
if [ -d "$VITLIB_DATA/mnist" ] || [ "$mode" = "--dry-run" ]; then
    step mnist "$PY" -m vitlib.train --recipe mnist --device "$device" --out "$runs/mnist" --no-progress "${mnist[@]}"
fi
rm -rf "$runs"
cat "$OUT/steps.log"
! grep -q "exit [1-9]" "$OUT/steps.log"
