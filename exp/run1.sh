#!/usr/bin/env bash
# GPU session 1 of this task: CE row kernel variants + Liger, GPU checks, elementwise step with the rescale kernel
export OUT=${OUT:-cuda-results}
export CHECK_TIMEOUT=120 BENCH_TIMEOUT=240 BLOCKS_TIMEOUT=150
export BLOCK_ARGS="--blocks 1024"
export LOSSES=Huber,MSE,L1,SmoothL1,BCEWithLogits,LogCosh,SigmoidFocal,GaussianNLL,PoissonNLL,Charbonnier
export BENCH_ARGS="--variants generated-sync,generated-multiply,builtin,compile"
export ROW_ARGS="--row-configs 2048/8,4096/8,8192/16,16384/16,32768/32 --row-module exp/cross_entropy_head.py --row-module exp/cross_entropy_lanes.py --row-module generated/cross_entropy.py"
date -u
STEPS=blocks bash benchmarks/cuda_run.sh
date -u
STEPS=check bash benchmarks/cuda_run.sh
date -u
STEPS=bench bash benchmarks/cuda_run.sh
date -u
