#!/bin/bash
# On the GPU machine, from the repository root, with prepare.py's output in $G (default .gpu) and results to $OUT:
#   G=.gpu OUT=results bash .gpu/device.sh        (MATCH=a,b and SECTIONS=parity|bench select what runs)
G=${G:-.gpu}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv | tee "$OUT/gpu.txt"
# TVM's runtime only: tvm_ffi for this Python, the tvm package without its compiler library
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$G"/whl/*.whl || exit 1
tar xzf "$G/tvm.tar.gz" -C /tmp/site || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
python3 "$G/run_on_device.py" "$G" "$OUT" --budget-s "${BUDGET:-300}" ${MATCH:+--match "$MATCH"} \
    ${SECTIONS:+--sections "$SECTIONS"} 2>&1 | tee "$OUT/log.txt"
