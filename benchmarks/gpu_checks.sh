#!/usr/bin/env bash
# The prepared GPU-machine checks, in one call (see docs/benchmarks.md): CUDA-graph training steps
# against eager ones (tests, then timings), and the caption stage end to end. Each part runs on its
# own with a time cap, so one failure does not hide the others; logs and JSON go to $OUT.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-gpu-checks}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
status=0
timeout 100 python3 -m pytest -q -p no:cacheprovider tests/test_step.py 2>&1 | tee "$OUT/test_step.log" || status=1
timeout 180 python3 benchmarks/bench_train.py --device cuda --steps both --batch-size 1024 \
    --models vlif,lightgcn,bpr --epochs 3 --warmup 1 --out "$OUT/bench_train_1024.json" 2>&1 \
    | tee "$OUT/bench_train_1024.log" || status=1
timeout 110 python3 benchmarks/bench_train.py --device cuda --steps both --batch-size 2048 \
    --models vlif,lightgcn,freedom --epochs 3 --warmup 1 --out "$OUT/bench_train_2048.json" 2>&1 \
    | tee "$OUT/bench_train_2048.log" || status=1
timeout 150 python3 benchmarks/check_caption_stage.py --device cuda 2>&1 | tee "$OUT/check_caption_stage.log" || status=1
exit $status
