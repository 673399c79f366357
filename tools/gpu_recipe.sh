#!/usr/bin/env bash
# The CamVid experiment (DeepLab-LargeFOV) as one call on a lent GPU machine: run from the repository
# root there, with the pack folder made here by `make camvid-gpu-pack` carried along. The machine has
# PyTorch, numpy, scipy, OpenCV and Pillow; the pack's wheels (protobuf, tqdm) are unpacked onto PYTHONPATH.
# What comes back ($OUT, at most 7 files and 56 MiB: one file and 8 MiB of headroom below the limits):
# results.<k>.tar (score maps, DCNN labels, float16 weights), train.log, recipe.json (which lists what
# comes back) and crf_throughput.txt (the torch CRF's images/s); `make camvid-gpu-receive
# RESULTS=<that folder>` unpacks them here for the CRF and the evaluation.
# Variables: PACK, CONF, OUT, GPU (empty = CPU: the dry run), AMP, MINUTES (training), WORK_MINUTES (all
# the work, 7.5 of the 10-minute command: the run stops cleanly before it), WORKERS (at most; fewer if
# /dev/shm is small), BATCH, CRF_THROUGHPUT (0 skips the CRF figure), PLAN_ONLY=1 (print the commands
# the settings give, run nothing: the dry run checks the GPU branch's with them), CHECK_VERSIONS=1 (fail
# unless Python, torch and numpy are the GPU image's: the dry run's virtual environment).
set -euo pipefail
START=$(date +%s)
PACK=${PACK:-pack/camvid}
CONF=${CONF:-prototxt/camvid/DeepLab-LargeFOV-GPU}
OUT=${OUT:?set OUT to the folder the results go to}
GPU=${GPU-0}
AMP=${AMP-bf16}
MINUTES=${MINUTES:-6}
WORK_MINUTES=${WORK_MINUTES:-7.5}
WORKERS=${WORKERS:-$(nproc)}
BATCH=${BATCH:-8}
WORK=${WORK:-$(if [ -n "${PLAN_ONLY:-}" ]; then echo '$WORK'; else mktemp -d; fi)}
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1   # a command stopped at its limit keeps what it printed
DEADLINE=$(awk -v s="$START" -v m="$WORK_MINUTES" 'BEGIN { printf "%d", s + m * 60 }')
if [ -n "$GPU" ]; then
    DEVICE_ARGS=(--gpu "$GPU")
    CRF_ARGS=(--throughput "cuda:$GPU" --batches 1,8,32 --speed-images 4 --repeat 3)
else   # the dry run: one CPU image, the code path only
    DEVICE_ARGS=()
    CRF_ARGS=(--throughput cpu --batches 1 --speed-images 1 --repeat 1)
fi
CRF_ARGS+=(--sample "$PACK/sample")
run() {
    if [ -n "${PLAN_ONLY:-}" ]; then printf '%q ' "$@"; echo; else "$@"; fi
}
if [ -z "${PLAN_ONLY:-}" ]; then
    # Pure-Python wheels, unpacked (a zip on sys.path cannot hold protobuf's `google` namespace package).
    mkdir -p "$WORK/site"
    for wheel in "$PACK"/wheels/*.whl; do
        [ -e "$wheel" ] && $PYTHON -m zipfile -e "$wheel" "$WORK/site"
    done
    export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
    export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
    $PYTHON -c 'import sys, torch, numpy, google.protobuf as pb; print("python", sys.version.split()[0], "torch",
torch.__version__, "numpy", numpy.__version__, "protobuf", pb.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
    df -h /dev/shm | tail -n 1
    [ -z "${CHECK_VERSIONS:-}" ] || $PYTHON -m deeplab.commands.recipe check-versions
fi
run $PYTHON -m deeplab.commands.recipe run --pack "$PACK" --conf "$CONF" --out "$OUT" --work "$WORK" \
    "${DEVICE_ARGS[@]}" ${AMP:+--amp "$AMP"} --channels-last --workers "$WORKERS" --minutes "$MINUTES" \
    --batch "$BATCH" --sets val test --deadline "$DEADLINE" ${RECIPE_ARGS:-}
# Then the torch CRF's batched throughput (issue 13's GPU figure) into $OUT/crf_throughput.txt, in the
# time left before the deadline (at most 90 s; skipped under 20 s).
LEFT=$((DEADLINE - $(date +%s)))
if [ "${CRF_THROUGHPUT-1}" = 1 ]; then
    if [ -n "${PLAN_ONLY:-}" ]; then
        run timeout 90 $PYTHON bench/bench_crf_torch.py "${CRF_ARGS[@]}"
    elif [ "$LEFT" -ge 20 ]; then
        timeout $((LEFT < 90 ? LEFT : 90)) $PYTHON bench/bench_crf_torch.py "${CRF_ARGS[@]}" \
            > "$OUT/crf_throughput.txt" 2>&1 || echo "CRF throughput failed or timed out: see crf_throughput.txt"
        tail -n 3 "$OUT/crf_throughput.txt"
    else
        echo "CRF throughput skipped: ${LEFT} s left before the deadline" | tee "$OUT/crf_throughput.txt"
    fi
fi
run $PYTHON -m deeplab.commands.recipe finish --out "$OUT"
