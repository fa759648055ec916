#!/usr/bin/env bash
# bf16 autocast against fp32, the only difference between the runs: bench/parity_cpu.sh's default column (the
# packaged MiniLM on the shared SQuAD 1.1 sample, 420 steps of 16, lr 2e-4, length-grouped padded batches,
# 256/128, scored on its dev file) with --bf16 and with --fp32, for each seed. The evidence behind the GPU
# default (bf16 autocast on a GPU that computes bf16; fast_path.py), measured where the machine computes bf16
# natively (AVX512-BF16 here). Why SQuAD 1.1: on the v2.0 sample (888 held-out questions) one epoch left MiniLM
# at the "no answer anywhere" plateau in both precisions, which compares nothing (bench/RESULTS.md).
#   SEEDS="42 43" bash bench/precision_parity.sh [OUT]   # OUT defaults to bench_out/precision; a table at the end
# About 7 min per bf16 run on 2 cores, 11 per fp32 run. A finished run is skipped when run again.
set -euo pipefail
cd "$(dirname "$0")/.."
MODES="bf16 fp32" exec bash bench/parity_cpu.sh "${1:-bench_out/precision}"
