"""User-user top-k co-interaction graph at Baby scale: blocked sparse products against dense U x U.

Synthetic skewed data with the Baby 5-core's shape (19,445 users, 7,050 items, ~160K interactions):
user activity and item popularity both heavy-tailed, every user and item with >= 5 interactions on
average. The stage's code is timed on the training matrix; beside it, the dense approach
(X X^T as a U x U array, then a row top-k in torch), which needs U^2 * 4 bytes.

    PYTHONPATH=src python benchmarks/bench_user_user.py --out bench_user_user.json
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlif_pipeline.graphs.user_user import user_user_graph  # noqa: E402


def skewed_interactions(n_users: int, n_items: int, n_interactions: int, seed: int) -> sp.csr_matrix:
    """Binary (U, I): per-user counts 5 + Pareto tail, items drawn with Zipf-like popularity."""
    rng = np.random.default_rng(seed)
    extra = rng.pareto(1.5, size=n_users)
    extra *= (n_interactions - 5 * n_users) / extra.sum()
    per_user = np.minimum(5 + np.rint(extra).astype(np.int64), n_items // 2)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.5
    popularity /= popularity.sum()
    rows, cols = [], []
    for user, count in enumerate(per_user):
        rows.append(np.full(count, user))
        cols.append(rng.choice(n_items, size=count, replace=False, p=popularity))
    u, i = np.concatenate(rows), np.concatenate(cols)
    return sp.csr_matrix((np.ones(len(u), dtype=np.int32), (u, i)), shape=(n_users, n_items))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=19_445)
    parser.add_argument("--items", type=int, default=7_050)
    parser.add_argument("--interactions", type=int, default=160_792)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense U x U comparison")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    x = skewed_interactions(args.users, args.items, args.interactions, args.seed)
    item_degree = np.diff(x.tocsc().indptr)
    co_nnz = int(sum((x[s : s + 2048] @ x.T).nnz for s in range(0, x.shape[0], 2048)))
    results = []
    for block in args.block_sizes:
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            graph = user_user_graph(x, args.k, block)
            times.append(time.perf_counter() - started)
        results.append({"method": "blocked sparse", "block_size": block, "best_s": min(times),
                        "median_s": float(np.median(times)), "graph_nnz": int(graph.nnz)})
    peak_blocked = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if not args.no_dense:
        started = time.perf_counter()
        dense = torch.from_numpy((x @ x.T).toarray().astype(np.float32))
        dense.fill_diagonal_(float("-inf"))
        torch.topk(dense, args.k, dim=1)
        results.append({"method": "dense U x U + torch.topk", "block_size": None,
                        "best_s": time.perf_counter() - started, "median_s": None,
                        "dense_gib": args.users**2 * 4 / 2**30})
        del dense

    print(f"users {x.shape[0]}, items {x.shape[1]}, interactions {x.nnz}, max item degree {item_degree.max()}, "
          f"max user degree {np.diff(x.indptr).max()}, non-zeros of X X^T {co_nnz}, k {args.k}")
    print(f"{'method':>26} {'block':>6} {'best s':>8} {'median s':>9}")
    for row in results:
        median = f"{row['median_s']:.2f}" if row["median_s"] is not None else ""
        print(f"{row['method']:>26} {row['block_size'] or '':>6} {row['best_s']:>8.2f} {median:>9}")
    print(f"peak RSS after the blocked runs: {peak_blocked:.2f} GiB")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "interactions": int(x.nnz),
                                              "co_interaction_nnz": co_nnz, "peak_rss_gib_blocked": peak_blocked,
                                              "results": results}, indent=2))


if __name__ == "__main__":
    main()
