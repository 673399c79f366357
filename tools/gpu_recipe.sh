#!/usr/bin/env bash
# The CamVid experiment (DeepLab-LargeFOV) as one call on a lent GPU machine: run from the repository
# root there, with the pack folder made here by `make camvid-gpu-pack` carried along. The machine has
# PyTorch, numpy, scipy, OpenCV and Pillow; the pack's wheels (protobuf, tqdm) are unpacked onto PYTHONPATH.
# What comes back ($OUT): results.<k>.tar (score maps, DCNN labels, float16 weights), train.log and
# recipe.json, and crf_throughput.txt (the torch CRF's images/s); `make camvid-gpu-receive
# RESULTS=<that folder>` unpacks them here for the CRF and the evaluation. Variables: PACK, CONF, OUT,
# GPU (empty = CPU: the dry run), AMP, MINUTES, WORKERS, BATCH, CRF_THROUGHPUT (0 skips the CRF figure).
set -euo pipefail
PACK=${PACK:-pack/camvid}
CONF=${CONF:-prototxt/camvid/DeepLab-LargeFOV-GPU}
OUT=${OUT:?set OUT to the folder the results go to}
GPU=${GPU-0}
AMP=${AMP-bf16}
MINUTES=${MINUTES:-6}
WORKERS=${WORKERS:-$(nproc)}
BATCH=${BATCH:-8}
WORK=${WORK:-$(mktemp -d)}
PYTHON=${PYTHON:-python3}
# Pure-Python wheels, unpacked (a zip on sys.path cannot hold protobuf's `google` namespace package).
mkdir -p "$WORK/site"
for wheel in "$PACK"/wheels/*.whl; do
    [ -e "$wheel" ] && $PYTHON -m zipfile -e "$wheel" "$WORK/site"
done
export PYTHONPATH="$PWD:$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python
$PYTHON -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "cpu")'
$PYTHON -m deeplab.commands.recipe run --pack "$PACK" --conf "$CONF" --out "$OUT" --work "$WORK" \
    ${GPU:+--gpu "$GPU"} ${AMP:+--amp "$AMP"} --channels-last --workers "$WORKERS" --minutes "$MINUTES" \
    --batch "$BATCH" --sets val test ${RECIPE_ARGS:-}
# Then the torch CRF's batched throughput (issue 13's GPU figure) into $OUT/crf_throughput.txt:
# on the GPU batches of 1, 8 and 32 images, in the dry run one CPU image (the code path only).
if [ "${CRF_THROUGHPUT-1}" = 1 ]; then
    timeout 90 $PYTHON bench/bench_crf_torch.py --throughput "${GPU:+cuda}${GPU:-cpu}" \
        --batches "${GPU:+1,8,32}${GPU:-1}" --speed-images "${GPU:+4}${GPU:-1}" --repeat "${GPU:+3}${GPU:-1}" \
        > "$OUT/crf_throughput.txt" 2>&1 || echo "CRF throughput failed or timed out: see crf_throughput.txt"
    tail -n 3 "$OUT/crf_throughput.txt"
fi
