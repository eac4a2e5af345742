"""Seconds per training epoch (BPR, LightGCN, FREEDOM, VLIF) and per full-ranking evaluation.

Builds a synthetic dataset of Baby's shape in memory (19,445 users, 7,050 items, 160,792
interactions, 384-d text and visual features; graphs from the pipeline's own builders), then times
the trainer's epoch loop per model and one full evaluation of the validation split.

    flock /tmp/vlif-bench.lock python benchmarks/bench_train.py --out bench_train.json
    python benchmarks/bench_train.py --models vlif --batch-size 1024 --native false   # PyTorch's ops only
    python benchmarks/bench_train.py --models vlif --batch-size 1024 --isa x86-64-v3  # an AVX2 CPU's code
    python benchmarks/bench_train.py --models freedom --visual-dim 4096   # the published CNN features' width
    python3 benchmarks/bench_train.py --device cuda        # writes $OUT/bench_train.json when OUT is set
    python3 benchmarks/bench_train.py --device cuda --steps both   # eager and CUDA-graph steps compared

``--isa x86-64-v3`` runs what an AVX2 CPU runs, on an AVX-512 one: the C kernels built for that
level, and PyTorch, MKL and oneDNN held to AVX2 (their environment variables are set and the
script restarts itself, as they are read when torch loads). The JSON and the printed header name
the CPU, its vector ISA, the kernels' build level and which path each kernel call site took.

Needs numpy, scipy and torch only (no polars), so it runs on the GPU machine's bare Python.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# held to AVX2 with --isa x86-64-v3; read when torch loads, so set before the import (see main)
ISA_ENV = {
    "x86-64-v3": {
        "VLIF_KERNEL_MARCH": "x86-64-v3",
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
    "native": {},
}

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlif_pipeline.models import build_model, native  # noqa: E402
from vlif_pipeline.training.data import TrainData, resolve_device  # noqa: E402
from vlif_pipeline.training.evaluator import Evaluator  # noqa: E402
from vlif_pipeline.training.sampler import TripleSampler  # noqa: E402
from vlif_pipeline.training.synthetic import baby_shape, make_synthetic, to_train_data  # noqa: E402
from vlif_pipeline.training.step import GraphedStep, make_optimizer, make_step  # noqa: E402
from vlif_pipeline.training.trainer import train_epoch  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_kind(step: object) -> str:
    if not isinstance(step, GraphedStep):
        return "eager"
    return "cuda graph" if step.graph is not None else "eager, capture failed"


def time_epochs(
    name: str, data: TrainData, batch_size: int, epochs: int, warmup: int, graphed: bool
) -> dict[str, Any]:
    """Median seconds of ``epochs`` timed epochs after ``warmup`` untimed ones (fresh model, seed 0).

    ``graphed``: the trainer's step (a CUDA graph for graphable models on CUDA); else plain eager steps.
    """
    torch.manual_seed(0)
    try:
        model = build_model(name, data, {})
    except (ImportError, ValueError) as err:
        return {"skipped": f"{type(err).__name__}: {err}"}
    optimizer = make_optimizer(model, 1e-3)
    step = make_step(model, optimizer, batch_size, graphs=graphed)
    sampler = TripleSampler(data.train, seed=0)
    times, cpu_times, losses = [], [], []
    for epoch in range(1, warmup + epochs + 1):
        sync(data.device)
        started, cpu_started = time.perf_counter(), time.process_time()
        losses.append(train_epoch(model, step, sampler, epoch, batch_size))
        sync(data.device)
        if epoch > warmup:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)
    return {
        "step": _step_kind(step),
        "capture_error": step.error if isinstance(step, GraphedStep) else None,
        "epoch_seconds": statistics.median(times),
        "all_seconds": times,
        "epoch_cpu_seconds": statistics.median(cpu_times),
        "epoch_losses": losses,
        "model": model,
    }


def time_evaluation(model: torch.nn.Module, evaluator: Evaluator, repeats: int) -> tuple[list[float], list[float]]:
    """Wall and process-CPU seconds of full evaluation passes (prepare_eval + scoring + top-k + metrics)."""
    times, cpu_times = [], []
    for _ in range(repeats + 1):
        sync(evaluator.device)
        started, cpu_started = time.perf_counter(), time.process_time()
        evaluator.evaluate(model)
        sync(evaluator.device)
        times.append(time.perf_counter() - started)
        cpu_times.append(time.process_time() - cpu_started)
    return times[1:], cpu_times[1:]


def cpu_description() -> dict[str, Any]:
    """The CPU's model, its widest vector ISA, its flags and what PyTorch dispatches to on it."""
    flags: list[str] = []
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            flags = line.split(":", 1)[1].split()
            break
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "below AVX2"
    return {
        "model": native.cpu_model(),
        "vector_isa": isa,
        "flags": flags,
        "torch_capability": torch.backends.cpu.get_cpu_capability(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--models", default="bpr,lightgcn,freedom,vlif")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument(
        "--steps", choices=["auto", "eager", "both"], default="auto",
        help="auto: the trainer's steps (CUDA graphs where possible); both: eager and graphed side by side",
    )
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per model (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--eval-repeats", type=int, default=5)
    parser.add_argument("--eval-batch-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the dataset (quick checks only)")
    parser.add_argument(
        "--visual-dim", type=int, default=384,
        help="visual feature width: 384 (captions' sentence features), 4096 (the published CNN features)",
    )
    parser.add_argument("--native", choices=["auto", "true", "false"], default="auto", help="the C kernels' mode")
    parser.add_argument("--isa", choices=sorted(ISA_ENV), default="native", help="see the module's docstring")
    parser.add_argument("--out", help="JSON results path (default $OUT/bench_train.json when OUT is set)")
    args = parser.parse_args(argv)
    wanted = ISA_ENV[args.isa]
    if any(os.environ.get(key) != value for key, value in wanted.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **wanted})
    native.configure({"auto": "auto", "true": True, "false": False}[args.native])
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    shape = baby_shape(args.scale)

    started = time.perf_counter()
    synthetic = make_synthetic(**shape, seed=0, dim_visual=args.visual_dim)
    data = to_train_data(synthetic, device)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    evaluator = Evaluator(data.train, data.valid, device, args.eval_batch_size)
    evaluator_setup = time.perf_counter() - started

    results: dict[str, Any] = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
        ),
        "cpu": cpu_description(),
        "torch": torch.__version__,
        "dataset": {
            **shape, "n_train": int(data.train.nnz), "n_valid": int(data.valid.nnz), "seconds_to_build": build_seconds
        },
        "batch_size": args.batch_size,
        "visual_dim": args.visual_dim,
        "models": {},
    }
    rows = []
    eval_model = None
    for name in args.models.split(","):
        variants = {"auto": [True], "eager": [False], "both": [False, True]}[args.steps]
        variants = variants if device.type == "cuda" else variants[:1]  # no graphs on a CPU
        for graphed in variants:
            timing = time_epochs(name, data, args.batch_size, args.epochs, args.warmup, graphed)
            model = timing.pop("model", None)
            if graphed and len(variants) > 1 and timing.get("step") == "eager":
                continue  # the model is not graphable: the eager row already says it all
            label = f"{name} ({timing.get('step', 'skipped')})"
            if model is not None:
                timing["valid_recall@20"] = evaluator.evaluate(model)["recall@20"]
                if name == "lightgcn":
                    eval_model = model
            results["models"][label] = timing
            if "epoch_seconds" in timing:
                rows.append((label, f"{timing['epoch_seconds']:.3f}", f"{timing['epoch_cpu_seconds']:.3f}"))
            else:
                rows.append((label, timing["skipped"], ""))
    if eval_model is None:
        torch.manual_seed(0)
        eval_model = build_model("lightgcn", data, {})
    eval_times, eval_cpu = time_evaluation(eval_model, evaluator, args.eval_repeats)
    results["evaluation"] = {
        "model": "lightgcn",
        "users": evaluator.n_users,
        "seconds": statistics.median(eval_times),
        "all_seconds": eval_times,
        "cpu_seconds": statistics.median(eval_cpu),
        "setup_seconds": evaluator_setup,
    }
    eval_row = (f"{statistics.median(eval_times):.3f}", f"{statistics.median(eval_cpu):.3f}")
    rows.append(("evaluation (valid, lightgcn)", *eval_row))

    results["compute"] = native.provenance()
    cpu = results["cpu"]
    print(f"device: {results['device_name']}, torch {torch.__version__}, dataset {results['dataset']}")
    print(
        f"cpu: {cpu['model']} ({cpu['vector_isa']}); kernels built for -march={native.march()}, native "
        f"{args.native}; PyTorch's CPU capability {cpu['torch_capability']}"
    )
    for _, note in native.take_notes():
        print(f"  {note}")
    print(f"  calibration: {results['compute']['calibration_seconds']} s in all")
    header = "seconds per epoch / per evaluation"
    width = max(len(header), *(len(r[0]) for r in rows))
    print(f"{header.ljust(width)}  wall    process CPU")
    for what, wall, cpu in rows:
        print(f"{what.ljust(width)}  {wall.ljust(6)}  {cpu}")
    out = args.out or (str(Path(os.environ["OUT"]) / "bench_train.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
