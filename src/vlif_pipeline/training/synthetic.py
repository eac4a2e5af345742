"""Synthetic datasets with planted structure, for the trainer's tests and the training benchmark.

Users and items get latent factors; each user's items are drawn without replacement from
softmax(sharpness * u.i + popularity) (Gumbel top-k, in user blocks: never a full U x I matrix);
text and visual features are noisy random projections of disjoint halves of the item factors, so
each modality carries signal the other lacks. The split is a seeded per-user random
8:1:1 split and the graphs come from the pipeline's graph builders, so models see what they see in a run.
Only numpy, scipy and torch are needed (no polars): the benchmark runs on the GPU machine too.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from vlif_pipeline.graphs.item_knn import mixed_graph, neighbour_lists
from vlif_pipeline.graphs.user_item import normalised_adjacency
from vlif_pipeline.graphs.user_user import user_user_graph
from vlif_pipeline.training.data import TEST, TRAIN, VALID, TrainData, build_train_data, split_matrices


@dataclass
class SyntheticSet:
    """Host-side arrays of a synthetic dataset: interactions (N,) and features (I, D)."""

    n_users: int
    n_items: int
    users: np.ndarray
    items: np.ndarray
    split: np.ndarray
    text: np.ndarray
    visual: np.ndarray


BABY = {"n_users": 19445, "n_items": 7050, "n_interactions": 160792}  # Amazon Baby after 5-core


def baby_shape(scale: float = 1.0) -> dict[str, int]:
    """:func:`make_synthetic`'s size arguments for Baby's shape, each times ``scale`` (at least 50)."""
    return {key: max(int(value * scale), 50) for key, value in BABY.items()}


def _degrees(rng: np.random.Generator, n_users: int, n_interactions: int, n_items: int) -> np.ndarray:
    """Per-user interaction counts: at least 5, heavy-tailed, summing to ``n_interactions``."""
    extra = n_interactions - 5 * n_users
    if extra < 0:
        raise ValueError(f"{n_interactions} interactions cannot give {n_users} users 5 each")
    cap = min(n_items // 2, 200)
    weights = rng.lognormal(0.0, 1.0, n_users)
    degrees = 5 + rng.multinomial(extra, weights / weights.sum())
    overflow = np.maximum(degrees - cap, 0)
    degrees -= overflow
    spare = np.flatnonzero(degrees < cap)
    np.add.at(degrees, rng.choice(spare, size=int(overflow.sum())), 1)
    return np.minimum(degrees, cap)


def per_user_split(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Split codes (N,) for ``users`` sorted by user: per user, shuffled, about 8:1:1 (REFERENCE section 2).

    Users with fewer than 10 interactions hold out 1 valid and 1 test; others floor(0.2 n), half
    valid and the odd one test: the pipeline's (and MMRec's) rule, ``data/split.py``, which needs polars.
    """
    order = np.lexsort((rng.random(users.size), users))
    starts = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1]])
    lengths = np.diff(np.r_[starts, users.size])
    rank = np.arange(users.size) - np.repeat(starts, lengths)
    length = np.repeat(lengths, lengths)
    held = np.where(length < 10, 2, np.floor(length * 0.2 + 1e-9).astype(np.int64))
    codes = np.full(users.size, TRAIN, dtype=np.int64)
    codes[rank < held] = TEST
    codes[rank < held // 2] = VALID
    split = np.empty_like(codes)
    split[order] = codes
    return split


def make_synthetic(
    n_users: int,
    n_items: int,
    n_interactions: int,
    dim_text: int = 384,
    dim_visual: int = 384,
    n_factors: int = 16,
    sharpness: float = 2.0,
    feature_noise: float = 0.5,
    seed: int = 0,
) -> SyntheticSet:
    """A dataset of (about, after capping degrees) ``n_interactions`` unique interactions."""
    rng = np.random.default_rng(seed)
    user_f = (rng.standard_normal((n_users, n_factors)) / np.sqrt(n_factors)).astype(np.float32)
    item_f = rng.standard_normal((n_items, n_factors)).astype(np.float32)
    popularity = rng.normal(0.0, 1.0, n_items).astype(np.float32)
    degrees = _degrees(rng, n_users, n_interactions, n_items)
    top = int(degrees.max())
    generator = torch.Generator().manual_seed(seed)
    item_t = torch.from_numpy(item_f)
    pop_t = torch.from_numpy(popularity)
    chosen = []
    for start in range(0, n_users, 2048):
        logits = sharpness * torch.from_numpy(user_f[start : start + 2048]) @ item_t.T + pop_t
        uniform = torch.rand(logits.shape, generator=generator).clamp_min_(1e-12)
        chosen.append(torch.topk(logits - torch.log(-torch.log(uniform)), top, dim=1).indices.numpy())
    ranked = np.concatenate(chosen)
    keep = np.arange(top)[None, :] < degrees[:, None]
    users = np.repeat(np.arange(n_users, dtype=np.int64), degrees)
    items = ranked[keep].astype(np.int64)
    split = per_user_split(users, rng)
    half = n_factors // 2

    def features(factors: np.ndarray, dim: int) -> np.ndarray:
        projection = rng.standard_normal((factors.shape[1], dim)).astype(np.float32)
        noisy = factors @ projection + feature_noise * np.sqrt(factors.shape[1]) * rng.standard_normal(
            (n_items, dim)
        ).astype(np.float32)
        return (noisy / np.linalg.norm(noisy, axis=1, keepdims=True)).astype(np.float32)

    return SyntheticSet(
        n_users=n_users,
        n_items=n_items,
        users=users,
        items=items,
        split=split,
        text=features(item_f[:, :half], dim_text),
        visual=features(item_f[:, half:], dim_visual),
    )


def item_knn_graph(text: np.ndarray, visual: np.ndarray, k: int = 10) -> sp.csr_matrix:
    """The pipeline's mixed kNN item graph (I, I), modalities weighted 0.5/0.5, self included."""
    neighbours = [neighbour_lists(f.copy(), k, "include", 4096, torch.device("cpu")) for f in (text, visual)]
    return mixed_graph(neighbours, [0.5, 0.5])


def to_train_data(data: SyntheticSet, device: torch.device | str = "cpu", k: int = 10) -> TrainData:
    """Splits, features and all three graphs of a synthetic dataset on ``device``."""
    train, valid, test = split_matrices(data.users, data.items, data.split, data.n_users, data.n_items)
    return build_train_data(
        data.n_users,
        data.n_items,
        train,
        valid,
        test,
        normalised_adjacency(train),
        text=data.text,
        visual=data.visual,
        item_knn=item_knn_graph(data.text, data.visual, k),
        user_user=user_user_graph(train, k),
        device=device,
    )


def write_run_inputs(data: SyntheticSet, out_dir: str | os.PathLike[str], k: int = 10) -> dict[str, Path]:
    """Write the ``train`` stage's input files (kcore dir, features, graphs) under ``out_dir``.

    Returns the paths keyed by the stage's option names (kcore_dir, text, visual, user_item,
    item_knn, user_user).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    kcore = out / "kcore"
    kcore.mkdir(parents=True, exist_ok=True)
    n = data.users.size
    table = pa.table(
        {
            "u": data.users,
            "i": data.items,
            "rating": np.full(n, 5.0, dtype=np.float32),
            "timestamp": np.zeros(n, dtype=np.int64),
            "split": data.split.astype(np.int8),
        }
    )
    pq.write_table(table, kcore / "interactions.parquet")
    stats = {"n_users": data.n_users, "n_items": data.n_items, "n_interactions": n}
    (kcore / "stats.json").write_text(json.dumps(stats))
    train, _, _ = split_matrices(data.users, data.items, data.split, data.n_users, data.n_items)
    paths = {
        "kcore_dir": kcore,
        "text": out / "text.npy",
        "visual": out / "visual.npy",
        "user_item": out / "user_item.npz",
        "item_knn": out / "item_knn.npz",
        "user_user": out / "user_user.npz",
    }
    np.save(paths["text"], data.text)
    np.save(paths["visual"], data.visual)
    sp.save_npz(paths["user_item"], normalised_adjacency(train))
    sp.save_npz(paths["item_knn"], item_knn_graph(data.text, data.visual, k))
    sp.save_npz(paths["user_user"], user_user_graph(train, k))
    return paths
