"""Per-user train/valid/test splits on integer ids (0 train, 1 valid, 2 test).

Random split (REFERENCE section 2, MMRec's "random split", seeded): each user's interactions are
shuffled; a user with fewer than 10 interactions gets 1 valid, 1 test and the rest train; otherwise
``floor(n * (r_valid + r_test))`` are held out, ``floor(held * r_valid / (r_valid + r_test))`` of them
valid and the rest test, the rest train. With r = 0.1 each this is MMRec's own rule (its
``1splitting`` notebook: ``int(n * 0.2)`` held out, ``// 2`` valid, the odd one test): 20% held out,
n = 15 gives 12 + 1 + 2. A 1e-9 guard keeps a product that is an integer in exact arithmetic from
flooring one below. Users with 2 interactions get 1 train + 1 test and users with 1 interaction only
train, so every user keeps at least one training interaction.

The shuffle is vectorised yet defined per user: interactions are put in a canonical order
(u, timestamp, i), one uniform key per interaction is drawn from ``numpy.random.default_rng(seed)``
(PCG64: the same stream on every machine), and each user's interactions are ordered by key (item
id breaks the measure-zero ties). Inputs must hold each (u, i) pair at most once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")
SMALL_USER = 10


def _group_starts(u_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per interaction (u sorted): its position within its user's run, and that run's length."""
    n = u_sorted.size
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    boundary = np.flatnonzero(np.diff(u_sorted)) + 1
    starts = np.concatenate(([0], boundary))
    lengths = np.diff(np.concatenate((starts, [n])))
    run_start = np.repeat(starts, lengths)
    return np.arange(n) - run_start, np.repeat(lengths, lengths)


def _random_counts(length: np.ndarray, r_valid: float, r_test: float) -> tuple[np.ndarray, np.ndarray]:
    """(n_valid, n_test) for each user length, per the module rule."""
    large = length >= SMALL_USER
    held = np.floor(length * (r_valid + r_test) + 1e-9).astype(np.int64)
    share = r_valid / (r_valid + r_test) if r_valid + r_test > 0 else 0.0
    valid_large = np.floor(held * share + 1e-9).astype(np.int64)
    n_valid = np.where(large, valid_large, (length >= 3).astype(np.int64))
    n_test = np.where(large, held - valid_large, (length >= 2).astype(np.int64))
    return n_valid, n_test


def _label(order: np.ndarray, u: np.ndarray, r_valid: float | None, r_test: float | None) -> np.ndarray:
    """Label interactions taken in ``order`` (users grouped, held-out ones last within a user).

    Ratios ``None`` means leave-one-out: one valid and one test per user.
    """
    position, length = _group_starts(u[order])
    if r_valid is None or r_test is None:
        n_valid, n_test = (length >= 3).astype(np.int64), (length >= 2).astype(np.int64)
    else:
        n_valid, n_test = _random_counts(length, r_valid, r_test)
    n_train = length - n_valid - n_test
    labels_sorted = np.where(position < n_train, TRAIN, np.where(position < n_train + n_valid, VALID, TEST))
    split = np.empty(u.size, np.int8)
    split[order] = labels_sorted
    return split


def _order(*keys: np.ndarray) -> np.ndarray:
    """Permutation sorting by the keys, first key most significant (polars' parallel sort)."""
    frame = pl.DataFrame({f"k{n}": key for n, key in enumerate(keys)})
    return frame.select(pl.arg_sort_by(frame.columns)).to_series().to_numpy()


def random_split(
    u: np.ndarray, i: np.ndarray, timestamp: np.ndarray, seed: int, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> np.ndarray:
    """Seeded per-user random split; returns int8 labels aligned with the inputs."""
    keys = np.empty(u.size, np.float64)
    keys[_order(u, timestamp, i)] = np.random.default_rng(seed).random(u.size)
    return _label(_order(u, keys, i), u, ratios[1], ratios[2])


def loo_split(u: np.ndarray, i: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Chronological leave-one-out: each user's latest interaction is test, the one before valid.

    Ties in time are broken by item id; small users follow the same rule as the random split.
    """
    return _label(_order(u, timestamp, i), u, None, None)


def split_stats(interactions: pl.DataFrame, n_users: int, n_items: int) -> dict[str, Any]:
    """Sizes, density and per-split counts of a kcore interaction table."""
    counts = np.bincount(interactions.get_column("split").to_numpy(), minlength=3)
    n = interactions.height
    return {
        "n_users": n_users,
        "n_items": n_items,
        "n_interactions": n,
        "density": n / (n_users * n_items) if n_users and n_items else 0.0,
        "splits": {name: int(c) for name, c in zip(SPLIT_NAMES, counts, strict=True)},
    }
