#!/usr/bin/env bash
# One GPU machine's measurements in one command, from the checkout's root: the GPU's
# outputs against the CPU's (scripts/gpu_check.py), then the bench's GPU table
# (scripts/bench.py --gpu). Tables, JSON and logs go to $OUT (default gpu-session/):
#   gpu.txt, check/gpu_check.{md,json}, check.log, bench/bench.{json,png}, bench.log
# STEPS=check or STEPS=bench runs one of the two (each takes minutes on a GPU machine).
#
# A machine that has torch but none of the project's other packages (no network there)
# takes them as wheels for its Python, fetched beforehand into .whl/ (.gitignore'd):
#   scripts/gpu_session.sh --download [PYTHON_VERSION]     (default 3.12)
# Where they are missing, what .whl/ holds is installed into /tmp/o2v-site first; the
# checkout is used in place (PYTHONPATH), so nothing is built there.
#
# Rehearsal on a machine without a GPU (the same steps, every difference 0):
#   DEVICE=cpu scripts/gpu_session.sh --records 20000 --heavy-records 400
# Arguments other than --download go to the bench.
set -euo pipefail
cd "$(dirname "$0")/.."

# What the project needs beyond torch, numpy, click, tqdm, safetensors, psutil, pyarrow
# and prometheus_client, which that machine's image already has.
WHEELS=(orjson smart_open boto3 botocore s3transfer jmespath zstandard)

if [[ "${1:-}" == "--download" ]]; then
    version="${2:-3.12}"
    platforms=()
    for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 \
        manylinux2014_x86_64 manylinux1_x86_64; do
        platforms+=(--platform "$p")
    done
    mkdir -p .whl
    # Pure-Python packages come as py3 wheels, the rest for that Python and platform.
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$version" \
        --implementation cp "${platforms[@]}" -d .whl "${WHEELS[@]}"
    ls .whl
    exit 0
fi

OUT="${OUT:-gpu-session}"
DEVICE="${DEVICE:-cuda}"
STEPS="${STEPS:-check bench}"  # either alone: STEPS=bench
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
NEEDED="import orjson, smart_open, boto3, zstandard"
if ! "$PYTHON" -c "$NEEDED" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/o2v-site .whl/*.whl
    export PYTHONPATH="/tmp/o2v-site${PYTHONPATH:+:$PYTHONPATH}"
fi
# The checkout in place: the bench runs `python -m o2v_batch` where no o2v-batch is installed.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import o2v_batch; $NEEDED" || {
    echo "packages missing: fetch their wheels with scripts/gpu_session.sh --download" >&2
    exit 2
}
if [[ "$DEVICE" != cpu ]]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
status=0
if [[ " $STEPS " == *" check "* ]]; then
    "$PYTHON" scripts/gpu_check.py --devices "$DEVICE" --out "$OUT/check" 2>&1 |
        tee "$OUT/check.log" || status=1
fi
if [[ " $STEPS " == *" bench "* ]]; then
    "$PYTHON" scripts/bench.py --gpu --gpu-device "$DEVICE" --out "$OUT/bench" "$@" 2>&1 |
        tee "$OUT/bench.log" || status=1
fi
exit "$status"
