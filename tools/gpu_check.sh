#!/usr/bin/env bash
# The prepared GPU check (issue 22 item 6) as one call on a lent GPU machine, run from the repository
# root there: the CUDA cases of every device-parametrised test (`pytest -m device`, the `device`
# fixture of tests/conftest.py), the engine's forward (fp32 NCHW and channels_last), training (fp32, and
# bf16 autocast with channels_last) and extraction (fp32 and bf16) benches against the hand-written
# modules in the same run, and the torch CRF's batched throughput. Each step runs under its own
# `timeout` and the whole stops before WORK_MINUTES (8.5 of the 10-minute command); a failed step is
# recorded and the next one runs. What comes back ($OUT): one file, gpu_check.txt, with each step's
# status, command and the end of its output. The machine has PyTorch, numpy, pytest, OpenCV; the
# pure-Python wheels of the CamVid pack (protobuf, tqdm: `make camvid-gpu-pack`) are unpacked onto
# PYTHONPATH when WHEELS holds them.
# Variables: OUT, GPU (empty = CPU: the dry run, where the CUDA steps say "skipped: no CUDA"), PYTHON,
# WORK_MINUTES, WHEELS (folder of .whl, default pack/camvid/wheels), SAMPLE (the VOC sample image's
# folder for the CRF bench, default pack/camvid/sample where present), PLAN_ONLY=1 (print the commands
# the settings give, run nothing: `make gpu-check-dry-run` and tests/test_gpu_check.py check them).
set -uo pipefail   # no -e: a failed step is recorded and the check goes on
START=$(date +%s)
OUT=${OUT:?set OUT to the folder the summary goes to}
GPU=${GPU-0}
PYTHON=${PYTHON:-python3}
WORK_MINUTES=${WORK_MINUTES:-8.5}
WHEELS=${WHEELS:-pack/camvid/wheels}
SAMPLE=${SAMPLE:-$(if [ -d pack/camvid/sample ]; then echo pack/camvid/sample; fi)}
export PYTHONUNBUFFERED=1   # a step stopped at its limit keeps what it printed
DEADLINE=$(awk -v s="$START" -v m="$WORK_MINUTES" 'BEGIN { printf "%d", s + m * 60 }')
SUMMARY="$OUT/gpu_check.txt"
DEVICE=${GPU:+cuda:$GPU}
OK=0 FAILED=0 SKIPPED=0

# step NAME SECONDS cuda|any COMMAND...: run COMMAND under `timeout` (at most SECONDS, and no later than
# the deadline), append its status, command and output's end to the summary.
step() {
    local name=$1 limit=$2 needs=$3
    shift 3
    if [ -n "${PLAN_ONLY:-}" ]; then
        printf '%q ' timeout "$limit" "$@"; echo
        return
    fi
    local left=$((DEADLINE - $(date +%s)))
    if [ "$needs" = cuda ] && [ -z "$GPU" ]; then
        echo "== $name: skipped: no CUDA" | tee -a "$SUMMARY"; SKIPPED=$((SKIPPED + 1)); return
    fi
    if [ "$left" -lt 15 ]; then
        echo "== $name: skipped: ${left} s left before the deadline" | tee -a "$SUMMARY"
        SKIPPED=$((SKIPPED + 1)); return
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    local t0 log rc status
    t0=$(date +%s)
    log=$(mktemp)
    timeout "$limit" "$@" > "$log" 2>&1
    rc=$?
    case $rc in
        0) status=ok; OK=$((OK + 1)) ;;
        124|137) status="timed out after ${limit} s"; FAILED=$((FAILED + 1)) ;;
        *) status="failed (exit $rc)"; FAILED=$((FAILED + 1)) ;;
    esac
    echo "== $name: $status, $(($(date +%s) - t0)) s" | tee -a "$SUMMARY"
    {
        printf '$ '; printf '%q ' "$@"; echo
        tail -n 60 "$log"
        echo
    } >> "$SUMMARY"
    rm -f "$log"
}

if [ -z "${PLAN_ONLY:-}" ]; then
    mkdir -p "$OUT"
    : > "$SUMMARY"
    SITE=$(mktemp -d)
    for wheel in "$WHEELS"/*.whl; do   # (a zip on sys.path cannot hold protobuf's `google` namespace)
        [ -e "$wheel" ] && $PYTHON -m zipfile -e "$wheel" "$SITE"
    done
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    ls "$WHEELS"/*.whl > /dev/null 2>&1 && export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
    echo "gpu_check: GPU=${GPU:-none (the CPU dry run)}, deadline ${WORK_MINUTES} min" | tee -a "$SUMMARY"
fi
export CAFFE_TEST_GPU=${GPU:-0}   # the device fixture's CUDA index

VERSIONS='import sys, torch, numpy, google.protobuf as pb; print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__, "protobuf", pb.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA")'
step versions 30 any $PYTHON -c "$VERSIONS"
step tests 120 any $PYTHON -m pytest -m device -q -rs -p no:cacheprovider --continue-on-collection-errors tests
step engine-fp32 50 cuda $PYTHON bench/bench_engine.py --device "$DEVICE" --sizes 513,321 --reps 5 --batch 8 \
    --no-channels-last
step engine-channels-last 50 cuda $PYTHON bench/bench_engine.py --device "$DEVICE" --sizes 513,321 --reps 5 --batch 8
step train-fp32 60 cuda $PYTHON bench/bench_train.py --device "$DEVICE" --batch 8 --crop 321 --iters 3 --reps 3
step train-bf16-channels-last 60 cuda $PYTHON bench/bench_train.py --device "$DEVICE" --batch 8 --crop 321 --iters 3 \
    --reps 3 --amp bf16 --channels-last
# bench_extract runs on the CPU, then on "cuda" in fp32 and bf16: the one visible device is GPU.
step extract-fp32-bf16 90 cuda env CUDA_VISIBLE_DEVICES="$GPU" $PYTHON bench/bench_extract.py --reps 3 --images 2
step crf-throughput 60 cuda $PYTHON bench/bench_crf_torch.py --throughput "$DEVICE" --batches 1,8,32 \
    --speed-images 4 --repeat 3 ${SAMPLE:+--sample "$SAMPLE"}

if [ -z "${PLAN_ONLY:-}" ]; then
    echo "gpu_check: $OK ok, $FAILED failed, $SKIPPED skipped in $(($(date +%s) - START)) s" | tee -a "$SUMMARY"
    [ "$FAILED" = 0 ]
fi
