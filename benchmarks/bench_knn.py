"""Item-item kNN: the blocked exact top-k against the dense n x n approach, time and peak memory.

Every measurement runs in a fresh child process so that its peak RSS (``ru_maxrss``) is its own.
Features are random float32 (n, dim). For sizes where scanning every query row would take too long,
``--max-query-rows Q`` scans Q query rows against all n items and extrapolates the scan time
linearly (the work per query row is the same), labelled as such; peak memory is still measured for
real, with all n feature rows in memory and the full (n, n) sparse graph assembled.

    PYTHONPATH=src python benchmarks/bench_knn.py --sizes 7050 100000 1000000 --max-query-rows 8192 \\
        --out bench_knn.json
    PYTHONPATH=src python benchmarks/bench_knn.py --device cuda --sizes 7050 100000 1000000

Runs without polars (numpy, scipy and torch only), e.g. on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlif_pipeline.graphs.item_knn import cosine_topk, mixed_graph, normalise_rows_  # noqa: E402


def random_features(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 standard normal, generated in chunks so no float64 copy of it exists."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 65536):
        out[start : start + 65536] = rng.standard_normal((min(65536, n - start), dim), dtype=np.float32)
    return out


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def child_blocked(args: argparse.Namespace) -> dict:
    """Scan ``queries`` rows with the stage's code; assemble the full graph; report time and memory."""
    device = torch.device(args.device)
    features = random_features(args.n, args.dim, args.seed)
    queries = min(args.queries, args.n)
    started = time.perf_counter()
    x = torch.from_numpy(features).to(device)
    normalise_rows_(x)
    sync(device)
    normalised = time.perf_counter()
    _, others = cosine_topk(x, args.k - 1, args.block_size, query_rows=(0, queries))
    sync(device)
    scanned = time.perf_counter()
    neighbours = np.empty((args.n, args.k), dtype=np.int64)
    neighbours[:, 0] = np.arange(args.n)
    neighbours[:queries, 1:] = others
    if queries < args.n:  # stand-ins for the rows not scanned, so the graph has its real size
        rng = np.random.default_rng(args.seed)
        neighbours[queries:, 1:] = rng.integers(0, args.n, size=(args.n - queries, args.k - 1))
    graph = mixed_graph([neighbours], [1.0])
    finished = time.perf_counter()
    scan = scanned - normalised
    total = (normalised - started) + scan * args.n / queries + (finished - scanned)
    result = {
        "method": "blocked", "n": args.n, "queries": queries, "scan_s": scan, "time_s": total,
        "extrapolated": queries < args.n, "peak_rss_gib": peak_rss_bytes() / 2**30, "graph_nnz": int(graph.nnz),
    }
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.check_dense:
        np.save(args.check_dense, others)
    return result


def child_dense(args: argparse.Namespace) -> dict:
    """The reference codes' way: the whole (n, n) similarity matrix, then a row top-k."""
    device = torch.device(args.device)
    features = random_features(args.n, args.dim, args.seed)
    started = time.perf_counter()
    x = torch.from_numpy(features).to(device)
    normalise_rows_(x)
    sim = x @ x.T
    sim.fill_diagonal_(float("-inf"))
    _, indices = torch.topk(sim, args.k - 1, dim=1)
    sync(device)
    result = {
        "method": "dense", "n": args.n, "queries": args.n, "time_s": time.perf_counter() - started,
        "extrapolated": False, "peak_rss_gib": peak_rss_bytes() / 2**30,
    }
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    if args.check_dense:
        blocked = np.load(args.check_dense)
        same = (np.sort(blocked, axis=1) == np.sort(indices.cpu().numpy(), axis=1)).all(axis=1)
        result["rows_equal_to_blocked"] = float(same.mean())
    return result


def backend_tile(dim: int, block: int, k: int) -> dict:
    """One (block x block) tile on CPU: torch mm + topk against numpy matmul + argpartition."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((block, dim), dtype=np.float32)
    b = rng.standard_normal((block, dim), dtype=np.float32)
    timings = {}
    for name in ("torch", "numpy"):
        best = float("inf")
        for _ in range(3):
            started = time.perf_counter()
            if name == "torch":
                torch.topk(torch.from_numpy(a) @ torch.from_numpy(b).T, k, dim=1)
            else:
                np.argpartition(-(a @ b.T), k, axis=1)[:, :k]
            best = min(best, time.perf_counter() - started)
        timings[name] = best
    return timings


def run_child(method: str, n: int, args: argparse.Namespace, queries: int, check: str | None) -> dict:
    command = [sys.executable, __file__, "--child", method, "--n", str(n), "--queries", str(queries),
               "--dim", str(args.dim), "--k", str(args.k), "--block-size", str(args.block_size),
               "--device", args.device, "--seed", str(args.seed)]
    if check:
        command += ["--check-dense", check]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"method": method, "n": n, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def dense_fits(n: int, device: str) -> tuple[bool, str]:
    """Whether an (n, n) float32 matrix plus top-k workspace fits: half of RAM or 80% of the GPU."""
    need = n * n * 4 * 1.5
    if device == "cuda":
        limit = torch.cuda.get_device_properties(0).total_memory * 0.8
    else:
        limit = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.5
    return need <= limit, f"needs {need / 2**30:.0f} GiB, limit {limit / 2**30:.0f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[7050, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--k", type=int, default=10, help="neighbours per item, self included")
    parser.add_argument("--block-size", type=int, default=8192)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--max-query-rows", type=int, default=None,
                        help="scan at most this many query rows per size and extrapolate the scan time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", choices=["blocked", "dense"], help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--queries", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--check-dense", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps((child_blocked if args.child == "blocked" else child_dense)(args)))
        return

    rows = []
    check = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_knn_{os.getpid()}.npy")
    for n in args.sizes:
        queries = min(n, args.max_query_rows or n)
        fits, why = dense_fits(n, args.device)
        rows.append(run_child("blocked", n, args, queries, check if fits and queries == n else None))
        if fits:
            rows.append(run_child("dense", n, args, n, check if queries == n else None))
        else:
            rows.append({"method": "dense", "n": n, "skipped": f"does not fit: {why}"})
    if os.path.exists(check):
        os.remove(check)
    tile = backend_tile(args.dim, args.block_size, args.k) if args.device == "cpu" else None

    print(f"kNN top-{args.k}, dim {args.dim}, block {args.block_size}, device {args.device}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'n':>9} {'method':>8} {'queries':>9} {'time s':>10} {'peak RSS GiB':>13} {'peak GPU GiB':>13}  note")
    for row in rows:
        if "skipped" in row or "error" in row:
            print(f"{row['n']:>9} {row['method']:>8} {'':>9} {'':>10} {'':>13} {'':>13}  "
                  f"{row.get('skipped') or row.get('error')}")
            continue
        note = "extrapolated from the scanned rows" if row["extrapolated"] else ""
        if "rows_equal_to_blocked" in row:
            note = f"neighbour sets equal to blocked in {row['rows_equal_to_blocked']:.2%} of rows"
        gpu = f"{row['peak_gpu_gib']:.2f}" if "peak_gpu_gib" in row else ""
        print(f"{row['n']:>9} {row['method']:>8} {row['queries']:>9} {row['time_s']:>10.1f} "
              f"{row['peak_rss_gib']:>13.2f} {gpu:>13}  {note}")
    if tile:
        print(f"CPU backend, one {args.block_size}x{args.block_size} tile: torch mm+topk {tile['torch']:.3f} s, "
              f"numpy matmul+argpartition {tile['numpy']:.3f} s")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k in
                                                        ("sizes", "dim", "k", "block_size", "device",
                                                         "max_query_rows", "seed")},
                                              "torch_threads": torch.get_num_threads(), "results": rows,
                                              "cpu_tile": tile}, indent=2))


if __name__ == "__main__":
    main()
