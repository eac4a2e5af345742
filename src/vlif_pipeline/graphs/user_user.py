"""Stage ``graph-user-user``: top-k co-interaction neighbours per user, from TRAIN only.

Co-interaction counts C = X X^T (X the binary train matrix, U x I) are computed one row block at
a time as a sparse product, so nothing U x U is ever dense. Per user, the k other users with the
most shared items are kept (ties: lower user index wins), weighted by a softmax over their counts
as in the paper's code. A user who shares no item with anyone keeps an empty row; one with fewer
than k co-interacting users keeps just those (the paper's code pads by random repetition instead,
which adds nothing but noise).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from vlif_pipeline.graphs.common import load_train_matrix, save_sparse
from vlif_pipeline.io import StageError, run_stage, setup_logging

DEFAULT_BLOCK = 2048
_HISTOGRAM_CELLS = 1 << 24


def _kth_largest(rows: np.ndarray, vals: np.ndarray, n_rows: int, top: int, k: int) -> np.ndarray:
    """Per row, the k-th largest count (1 if the row has fewer than k entries), shape (n_rows,).

    From a (rows, count) histogram: entries below it can never be in the top k, so they are dropped
    before the sort, which then sees about k entries per row plus the ties at the boundary.
    """
    hist = np.bincount(rows * (top + 1) + vals, minlength=n_rows * (top + 1)).reshape(n_rows, top + 1)
    at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
    return np.maximum((at_least >= k).sum(axis=1) - 1, 1)


def _block_topk(counts: sp.csr_matrix, first_row: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k (count desc, column asc) of each row of a (b, U) count block, self excluded.

    Returns COO parts (local rows, columns, counts) of the kept entries, grouped by row in rank
    order. Entries below their row's k-th largest count are dropped first (when the count histogram
    is small), then one sort of int64 keys (row, -count, column) ranks every row at once.
    """
    b, n_users = counts.shape
    rows = np.repeat(np.arange(b, dtype=np.int64), np.diff(counts.indptr))
    cols = counts.indices.astype(np.int64)
    vals = counts.data.astype(np.int64)
    keep = cols != rows + first_row
    rows, cols, vals = rows[keep], cols[keep], vals[keep]
    if rows.size == 0:
        return rows, cols, vals
    top = int(vals.max())
    if b * (top + 1) <= _HISTOGRAM_CELLS:
        keep = vals >= _kth_largest(rows, vals, b, top, k)[rows]
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    if b * (top + 1) * n_users >= 2**62:
        raise StageError(f"user-user key overflow: {b} rows x count {top} x {n_users} users; use a smaller --block-size")
    keys = (rows * (top + 1) + (top - vals)) * n_users + cols
    keys.sort()
    rows = keys // ((top + 1) * n_users)
    starts = np.searchsorted(rows, np.arange(b), side="left")
    rank = np.arange(keys.size) - starts[rows]
    keys, rows = keys[rank < k], rows[rank < k]
    cols = keys % n_users
    vals = top - (keys // n_users) % (top + 1)
    return rows, cols, vals


def softmax_by_row(rows: np.ndarray, counts: np.ndarray, n_rows: int) -> np.ndarray:
    """Softmax of ``counts`` within each row group (float64, shifted by the row max for stability)."""
    shifted = counts.astype(np.float64)
    row_max = np.full(n_rows, -np.inf)
    np.maximum.at(row_max, rows, shifted)
    weights = np.exp(shifted - row_max[rows])
    row_sum = np.bincount(rows, weights=weights, minlength=n_rows)
    return weights / row_sum[rows]


def user_user_graph(train: sp.csr_matrix, k: int, block_size: int = DEFAULT_BLOCK) -> sp.csr_matrix:
    """Top-k co-interaction graph, float32 CSR (U, U); row u holds softmax weights over its counts.

    ``train``: binary (U, I). Memory: one (block, U) sparse count block plus the (U, k) result.
    """
    x = sp.csr_matrix(train, dtype=np.int32)
    x.data[:] = 1
    xt = x.T.tocsr()
    n_users = x.shape[0]
    all_rows, all_cols, all_counts = [], [], []
    for start in range(0, n_users, block_size):
        counts = (x[start : start + block_size] @ xt).tocsr()
        rows, cols, vals = _block_topk(counts, start, k)
        all_rows.append(rows + start)
        all_cols.append(cols)
        all_counts.append(vals)
    rows = np.concatenate(all_rows)
    cols = np.concatenate(all_cols)
    weights = softmax_by_row(rows, np.concatenate(all_counts), n_users)
    graph = sp.csr_matrix((weights.astype(np.float32), (rows, cols)), shape=(n_users, n_users))
    graph.sort_indices()
    return graph


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="graph-user-user", description="top-k co-interaction user graph")
    parser.add_argument("--kcore-dir", required=True, help="folder with interactions.parquet and stats.json")
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--out", required=True, help="output .npz, scipy sparse (U, U) float32")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK, help="users per sparse product block")
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log, "graph-user-user")

    def body() -> None:
        if args.k < 1 or args.block_size < 1:
            raise StageError(f"--k and --block-size must be positive, got {args.k} and {args.block_size}")
        train = load_train_matrix(args.kcore_dir, logger)
        started = time.monotonic()
        graph = user_user_graph(train, args.k, args.block_size)
        degree = np.diff(graph.indptr)
        logger.info(
            "top-%d co-interaction graph in %.1f s: %d users with k neighbours, %d with fewer, %d with none",
            args.k, time.monotonic() - started, int((degree == args.k).sum()),
            int(((degree > 0) & (degree < args.k)).sum()), int((degree == 0).sum()),
        )
        save_sparse(args.out, graph)
        logger.info("wrote %s: shape %s, %d non-zeros", args.out, graph.shape, graph.nnz)

    return run_stage(body, logger)
