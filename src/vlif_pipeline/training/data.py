"""Everything a model and the trainer need, loaded once from the pipeline's files.

Only numpy, scipy, pyarrow and torch are imported here (no polars), so the training benchmark runs
on the GPU machine's bare Python.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from vlif_pipeline.io import StageError, load_item_features
from vlif_pipeline.models.propagation import to_torch_sparse

TRAIN, VALID, TEST = 0, 1, 2


@dataclass
class TrainData:
    """One dataset on one device.

    train/valid/test: binary scipy CSR (U, I) on the host (samplers and evaluators index them);
    text (I, D_t) and visual (I, D_v): float32 feature tensors or None; user_item: sparse CSR
    (U+I, U+I), symmetric-normalised train graph; item_knn: sparse (I, I) or None; user_user:
    sparse (U, U) or None. All tensors live on ``device``.
    """

    n_users: int
    n_items: int
    train: sp.csr_matrix
    valid: sp.csr_matrix
    test: sp.csr_matrix
    text: torch.Tensor | None
    visual: torch.Tensor | None
    user_item: torch.Tensor
    item_knn: torch.Tensor | None
    user_user: torch.Tensor | None
    device: torch.device


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when torch sees a GPU, else CPU; an explicit ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StageError(f"--device {name} requested but torch sees no CUDA device")
    return torch.device(name)


def split_matrices(
    users: np.ndarray, items: np.ndarray, split: np.ndarray, n_users: int, n_items: int
) -> tuple[sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """Binary CSR (U, I) matrices of the train, valid and test splits (duplicates collapse to 1)."""
    out = []
    for code in (TRAIN, VALID, TEST):
        mask = split == code
        matrix = sp.csr_matrix(
            (np.ones(int(mask.sum()), dtype=np.float32), (users[mask], items[mask])), shape=(n_users, n_items)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        matrix.sort_indices()
        out.append(matrix)
    return out[0], out[1], out[2]


def read_splits(kcore_dir: str | os.PathLike[str]) -> tuple[int, int, sp.csr_matrix, sp.csr_matrix, sp.csr_matrix]:
    """(n_users, n_items, train, valid, test) from ``kcore_dir`` (interactions.parquet + stats.json)."""
    from vlif_pipeline.graphs.common import read_interactions

    n_users, n_items, u, i, split = read_interactions(kcore_dir)
    path = Path(kcore_dir) / "interactions.parquet"
    if not (split == TRAIN).any():
        raise StageError(f"{path}: no training interactions (split == 0)")
    if not (split == VALID).any():
        raise StageError(f"{path}: no validation interactions (split == 1): early stopping needs them")
    if not (split == TEST).any():
        raise StageError(f"{path}: no test interactions (split == 2): there would be nothing to report")
    return (n_users, n_items, *split_matrices(u, i, split, n_users, n_items))


def _features(path: str | os.PathLike[str] | None, n_items: int) -> np.ndarray | None:
    """An (I, D) float32 feature matrix, validated against the item count."""
    return None if path is None else load_item_features(path, n_items)


def _graph(path: str | os.PathLike[str], shape: tuple[int, int]) -> sp.csr_matrix:
    """A scipy sparse .npz graph, validated: shape, structure, finite and non-negative weights."""
    try:
        matrix = sp.load_npz(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise StageError(f"{path}: cannot read as a scipy sparse .npz ({type(err).__name__}: {err})") from None
    if matrix.shape != shape:
        raise StageError(f"{path}: expected shape {shape}, got {matrix.shape}")
    matrix = sp.csr_matrix(matrix, dtype=np.float32)
    try:  # out-of-range or unsorted indices would crash torch's sparse kernels (no Python error)
        matrix.check_format(full_check=True)
    except ValueError as err:
        raise StageError(f"{path}: malformed sparse matrix ({err})") from None
    if not np.isfinite(matrix.data).all():
        raise StageError(f"{path}: has non-finite edge weights")
    if (matrix.data < 0).any():  # every graph the pipeline builds is a non-negative average
        raise StageError(f"{path}: has negative edge weights")
    return matrix


def build_train_data(
    n_users: int,
    n_items: int,
    train: sp.csr_matrix,
    valid: sp.csr_matrix,
    test: sp.csr_matrix,
    user_item: sp.spmatrix,
    text: np.ndarray | None = None,
    visual: np.ndarray | None = None,
    item_knn: sp.spmatrix | None = None,
    user_user: sp.spmatrix | None = None,
    device: torch.device | str = "cpu",
) -> TrainData:
    """Move host arrays to ``device`` as a :class:`TrainData` (used by the loader, tests, benchmarks)."""
    device = torch.device(device)

    def dense(array: np.ndarray | None) -> torch.Tensor | None:
        return None if array is None else torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).to(device)

    def sparse(matrix: sp.spmatrix | None) -> torch.Tensor | None:
        return None if matrix is None else to_torch_sparse(matrix, device)

    return TrainData(
        n_users=n_users,
        n_items=n_items,
        train=train,
        valid=valid,
        test=test,
        text=dense(text),
        visual=dense(visual),
        user_item=to_torch_sparse(user_item, device),
        item_knn=sparse(item_knn),
        user_user=sparse(user_user),
        device=device,
    )


def load_train_data(
    kcore_dir: str | os.PathLike[str],
    text: str | os.PathLike[str] | None,
    visual: str | os.PathLike[str] | None,
    user_item: str | os.PathLike[str],
    item_knn: str | os.PathLike[str] | None,
    user_user: str | os.PathLike[str] | None,
    device: torch.device | str,
) -> TrainData:
    """Load and validate a dataset's splits, features and graphs; optional inputs may be None."""
    n_users, n_items, train, valid, test = read_splits(kcore_dir)
    n_nodes = n_users + n_items
    return build_train_data(
        n_users,
        n_items,
        train,
        valid,
        test,
        _graph(user_item, (n_nodes, n_nodes)),
        text=_features(text, n_items),
        visual=_features(visual, n_items),
        item_knn=None if item_knn is None else _graph(item_knn, (n_items, n_items)),
        user_user=None if user_user is None else _graph(user_user, (n_users, n_users)),
        device=device,
    )
