#!/usr/bin/env bash
# One prepared GPU session (see README, "Benchmarks"): the Triton kernels checked against the
# reference on the GPU, then the CUDA benchmarks. Run from the repository root on a CUDA
# machine; results go to $OUT (default ./cuda-results). Wheels for packages the machine lacks
# (black and its needs, liger-kernel) may wait in .whl/. Settings, from the environment: LOSSES,
# STEPS (check,host,bench,trace,blocks), HOST_LOSSES, TRACE_LOSSES, BENCH_ARGS (default --back-to-back 10), BLOCK_ARGS, ROW_ARGS
# (default --row-configs 4096/8), CHECK_TESTS, CHECK_TIMEOUT, BENCH_TIMEOUT, TRACE_TIMEOUT,
# BLOCKS_TIMEOUT.
set -uo pipefail
OUT=${OUT:-cuda-results}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$OUT/gpu.txt"
LOSSES=${LOSSES:-Huber,MSE,BCEWithLogits,LogCosh,SigmoidFocal,GaussianNLL}
STEPS=${STEPS:-check,host,bench,blocks}
if [[ $STEPS == *check* ]]; then
    timeout ${CHECK_TIMEOUT:-240} python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_triton_cuda.py tests/test_deterministic.py ${CHECK_TESTS:-} 2>&1 \
        | tee "$OUT/check.log" | tail -25
fi
if [[ $STEPS == *host* ]]; then
    # the host's time per step where the GPU's is a few microseconds, where it goes, and the
    # torch ops each step launches
    timeout ${HOST_TIMEOUT:-120} python3 benchmarks/host_time.py --device cuda --profile --ops \
        ${HOST_LOSSES:-Huber MSE SigmoidFocal CrossEntropy} 2>&1 | tee "$OUT/host.md" | head -40
fi
if [[ $STEPS == *bench* ]]; then
    timeout ${BENCH_TIMEOUT:-360} python3 benchmarks/bench.py --device cuda --generated generated \
        --losses "$LOSSES" --repeats 20 --warmup 3 --markdown "$OUT/bench.md" ${BENCH_ARGS:---back-to-back 10} \
        specs/*.py 2>"$OUT/bench.log" | tail -40
fi
if [[ $STEPS == *trace* ]]; then
    # the GPU's kernels and busy time per step: at the bound, compute-bound, or waiting for
    # the host
    timeout ${TRACE_TIMEOUT:-120} python3 benchmarks/gpu_trace.py \
        ${TRACE_LOSSES:-Huber SigmoidFocal AdaptiveWing BinaryFocal Barron} \
        --variants generated,compile 2>&1 | tee "$OUT/trace.txt" | grep -v "^  " | grep .
fi
if [[ $STEPS == *blocks* ]]; then
    timeout ${BLOCKS_TIMEOUT:-120} python3 benchmarks/triton_block.py huber mse bce_with_logits \
        --profile ${BLOCK_ARGS:-} 2>"$OUT/profile.txt" | tee "$OUT/blocks.md"
    timeout ${BLOCKS_TIMEOUT:-120} python3 benchmarks/triton_block.py --row 8192x128256 ${ROW_ARGS:---row-configs 4096/8} 2>&1 \
        | tee "$OUT/row_blocks.md"
fi
