#!/usr/bin/env bash
# GPU session, run 2: row kernel at its new defaults and short rows, then bench with steps back to back
export OUT=${OUT:-cuda-results}
export BENCH_TIMEOUT=300 BLOCKS_TIMEOUT=130
export LOSSES=Huber,MSE,L1,SmoothL1,BCEWithLogits,LogCosh,SigmoidFocal,GaussianNLL,PoissonNLL,Charbonnier,Quantile,Cauchy,Welsch,SoftMargin,Hinge,Wing
export BENCH_ARGS="--back-to-back 10 --variants generated-sync,builtin,compile"
date -u
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
timeout $BLOCKS_TIMEOUT python3 benchmarks/triton_block.py --row 8192x128256,65536x8192,131072x1024 \
    --row-configs 4096/8 2>&1 | grep -v "Backend impl" | tee "$OUT/row_blocks.md"
date -u
STEPS=bench bash benchmarks/cuda_run.sh
date -u
