"""Inputs and outputs shared by the graph stages: the training interaction matrix and sparse files.

Only the training split ever reaches a graph (valid/test rows are dropped right here, in one place),
so no graph stage can leak held-out interactions by accident.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from vlif_pipeline.io import StageError, atomic_path, read_parquet_columns, require_integer_column

TRAIN_SPLIT = 0
_SPLITS = (0, 1, 2)


def read_stats(kcore_dir: Path) -> tuple[int, int]:
    """Return (n_users, n_items) from ``kcore_dir/stats.json``."""
    path = kcore_dir / "stats.json"
    try:
        stats = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise StageError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise StageError(f"{path}: not valid JSON ({err})") from err
    sizes = []
    for key in ("n_users", "n_items"):
        value = stats.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise StageError(f"{path}: key {key!r} must be a positive integer, got {value!r}")
        sizes.append(value)
    return sizes[0], sizes[1]


def read_interactions(kcore_dir: str | os.PathLike[str]) -> tuple[int, int, np.ndarray, np.ndarray, np.ndarray]:
    """(n_users, n_items, u, i, split) of ``kcore_dir``, each column (n,) int64, validated.

    Ids are checked against ``stats.json`` and split codes against 0/1/2; the one reader of
    interactions for the graph stages and the trainer (pyarrow only: no polars on GPU machines).
    """
    kcore_dir = Path(kcore_dir)
    n_users, n_items = read_stats(kcore_dir)
    path = kcore_dir / "interactions.parquet"
    table = read_parquet_columns(path, ("u", "i", "split"))
    u, i, split = (require_integer_column(path, table, name) for name in ("u", "i", "split"))
    for name, ids, bound in (("u", u, n_users), ("i", i, n_items)):
        bad = np.flatnonzero((ids < 0) | (ids >= bound))
        if bad.size:
            raise StageError(
                f"{path}: row {int(bad[0])}: {name}={int(ids[bad[0]])} outside 0..{bound - 1} "
                f"(stats.json; {bad.size} such rows)"
            )
    bad = np.flatnonzero(~np.isin(split, _SPLITS))
    if bad.size:
        raise StageError(f"{path}: row {int(bad[0])}: split={int(split[bad[0]])} is not one of 0, 1, 2")
    return n_users, n_items, u, i, split


def load_train_matrix(kcore_dir: str | os.PathLike[str], logger: logging.Logger) -> sp.csr_matrix:
    """Binary user-item matrix of the TRAIN split, shape (U, I), int32 CSR with sorted indices.

    Duplicate train pairs collapse to one edge (counted in the log).
    """
    n_users, n_items, u, i, split = read_interactions(kcore_dir)
    path = Path(kcore_dir) / "interactions.parquet"
    train = split == TRAIN_SPLIT
    if not train.any():
        raise StageError(f"{path}: no training interactions (split == 0)")
    matrix = sp.csr_matrix(
        (np.ones(int(train.sum()), dtype=np.int32), (u[train], i[train])), shape=(n_users, n_items)
    )
    matrix.sum_duplicates()
    duplicates = int(train.sum()) - matrix.nnz
    matrix.data[:] = 1
    logger.info(
        "%s: %d users, %d items, %d train edges (%d held-out rows ignored, %d duplicate train pairs merged)",
        path, n_users, n_items, matrix.nnz, int((~train).sum()), duplicates,
    )
    matrix.sort_indices()
    return matrix


def save_sparse(path: str | os.PathLike[str], matrix: sp.spmatrix) -> None:
    """Write a scipy sparse matrix as .npz atomically (``scipy.sparse.load_npz`` reads it, no pickle)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        sp.save_npz(fh, sp.csr_matrix(matrix), compressed=False)
