#!/usr/bin/env bash
# The prepared GPU check: from a bare machine with this repository copied onto it, about
# 10 minutes of one H100. Collects coinrun data with the shipped demonstrator, then times the
# paper preset's stage 1 and stage 2 at full size with and without each fast-path option,
# single-process and through torchrun (2 processes on the one GPU: the data-parallel code path),
# and prints one table (also written to $OUT/gpu_check.md and .json when OUT is set).
#
#   bash benchmarks/gpu_check.sh            # on the GPU machine
#   bash benchmarks/gpu_check.sh --toy      # toy sizes on a CPU (or LAPO_GPU_CHECK_TOY=1)
#
# Installs nothing over a torch that is already there (gpu_env.sh).
set -euo pipefail
source "$(dirname "$0")/gpu_env.sh"

exec $PY benchmarks/gpu_check.py "$@"
