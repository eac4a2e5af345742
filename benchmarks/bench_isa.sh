#!/usr/bin/env bash
# Every row of docs/benchmarks.md's CPU training table in one run (FREEDOM also on 4096-d features,
# the CNN features' width): this CPU's own ISA level and x86-64-v3 (AVX2, standing in for an AVX2
# CPU), each with native auto (kernels where measured faster) and native false (PyTorch's ops
# only). Writes one JSON per row into $1 (default results/bench-isa/, which git ignores); run it
# alone on the machine:
#     flock /tmp/vlif-bench.lock benchmarks/bench_isa.sh
set -euo pipefail
out=${1:-results/bench-isa}
mkdir -p "$out"
cd "$(dirname "$0")/.."
python=${PYTHON:-python}
lscpu | grep -E '^(Model name|Flags)' | sed 's/^Flags:.*\(avx512f\).*/Flags: ... \1 .../' || true
for isa in native x86-64-v3; do
  for mode in auto false; do
    "$python" benchmarks/bench_train.py --threads 2 --isa "$isa" --native "$mode" --models vlif \
      --batch-size 1024 --epochs 2 --warmup 1 --out "$out/vlif-$isa-$mode.json"
    "$python" benchmarks/bench_train.py --threads 2 --isa "$isa" --native "$mode" --models bpr,lightgcn,freedom \
      --batch-size 2048 --epochs 3 --warmup 1 --out "$out/baselines-$isa-$mode.json"
    "$python" benchmarks/bench_train.py --threads 2 --isa "$isa" --native "$mode" --models freedom \
      --batch-size 2048 --epochs 3 --warmup 1 --visual-dim 4096 --out "$out/freedom4096-$isa-$mode.json"
  done
done
