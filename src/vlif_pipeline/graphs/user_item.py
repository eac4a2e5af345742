"""Stage ``graph-user-item``: the symmetric-normalised user-item adjacency, built once from TRAIN.

LightGCN-style propagation multiplies by D^-1/2 A D^-1/2 every layer; building it here once keeps the
trainer free of graph code and guarantees that only training interactions are in it.
"""

from __future__ import annotations

import argparse

import numpy as np
import scipy.sparse as sp

from vlif_pipeline.graphs.common import load_train_matrix, save_sparse
from vlif_pipeline.io import run_stage, setup_logging


def normalised_adjacency(train: sp.csr_matrix) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the bipartite graph A = [[0, R], [R^T, 0]].

    ``train``: binary (U, I). Returns float32 CSR (U+I, U+I); users are rows 0..U-1, item i is row
    U+i. A node without training edges keeps an all-zero row and column (no division by zero).
    """
    r = sp.csr_matrix(train, dtype=np.float64)
    r.data[:] = 1.0
    adjacency = sp.bmat([[None, r], [r.T, None]], format="csr")
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.zeros_like(degree)
    np.divide(1.0, np.sqrt(degree), out=inv_sqrt, where=degree > 0)
    scale = sp.diags(inv_sqrt)
    normalised = (scale @ adjacency @ scale).tocsr().astype(np.float32)
    normalised.sort_indices()
    return normalised


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="graph-user-item", description=__doc__)
    parser.add_argument("--kcore-dir", required=True, help="folder with interactions.parquet and stats.json")
    parser.add_argument("--out", required=True, help="output .npz (scipy sparse, float32)")
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log, "graph-user-item")

    def body() -> None:
        train = load_train_matrix(args.kcore_dir, logger)
        graph = normalised_adjacency(train)
        save_sparse(args.out, graph)
        logger.info("wrote %s: shape %s, %d non-zeros", args.out, graph.shape, graph.nnz)

    return run_stage(body, logger)

