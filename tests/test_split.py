"""Per-user splits: the counts rule, seeding, order independence, leave-one-out."""

from __future__ import annotations

import numpy as np
import pytest

from vlif_pipeline.data.split import TEST, TRAIN, VALID, loo_split, random_split
from vlif_pipeline.training.synthetic import per_user_split


def _users(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = np.repeat(np.arange(len(lengths)), lengths)
    i = np.concatenate([rng.choice(1000, n, replace=False) for n in lengths])
    t = rng.integers(0, 10**6, u.size)
    return u, i, t


@pytest.mark.parametrize(
    ("n", "expected"),
    [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (9, (7, 1, 1)), (10, (8, 1, 1)), (14, (12, 1, 1)),
     (15, (12, 1, 2)), (19, (16, 1, 2)), (20, (16, 2, 2)), (25, (20, 2, 3)), (35, (28, 3, 4)), (100, (80, 10, 10))],
)
def test_random_split_counts(n: int, expected: tuple[int, int, int]) -> None:
    u, i, t = _users([n])
    labels = random_split(u, i, t, seed=1)
    assert tuple(int((labels == s).sum()) for s in (TRAIN, VALID, TEST)) == expected


def test_random_split_counts_follow_mmrec_for_every_length() -> None:
    """MMRec's rule: int(0.2 n) held out from n = 10 on, half of it (rounded down) valid, the rest test."""
    lengths = list(range(1, 301))
    u, i, t = _users(lengths)
    labels = random_split(u, i, t, seed=3)
    for user, n in enumerate(lengths):
        counts = np.bincount(labels[u == user], minlength=3)
        held = int(n * 0.2) if n >= 10 else min(n - 1, 2)
        valid = held // 2 if n >= 10 else int(n >= 3)
        assert counts.tolist() == [n - held, valid, held - valid], n


def test_synthetic_split_counts_equal_the_pipelines() -> None:
    """training/synthetic.py repeats the rule without polars; the counts per user must agree."""
    lengths = list(range(5, 120))
    u, i, t = _users(lengths)
    ours = per_user_split(u, np.random.default_rng(0))
    theirs = random_split(u, i, t, seed=0)
    for user in range(len(lengths)):
        mine = u == user
        assert np.bincount(ours[mine], minlength=3).tolist() == np.bincount(theirs[mine], minlength=3).tolist()


def test_custom_ratios() -> None:
    u, i, t = _users([40])
    labels = random_split(u, i, t, seed=1, ratios=(0.6, 0.2, 0.2))
    assert np.bincount(labels, minlength=3).tolist() == [24, 8, 8]


def test_random_split_is_seeded_and_independent_of_row_order() -> None:
    u, i, t = _users([5, 30, 12, 3, 50])
    a = random_split(u, i, t, seed=7)
    assert np.array_equal(a, random_split(u, i, t, seed=7))
    assert not np.array_equal(a, random_split(u, i, t, seed=8))
    perm = np.random.default_rng(3).permutation(u.size)
    b = random_split(u[perm], i[perm], t[perm], seed=7)
    assert np.array_equal(a[perm], b)


def test_random_split_pinned_across_machines() -> None:
    """PCG64 streams are stable across platforms and numpy versions; this pins our use of them."""
    u = np.zeros(12, dtype=np.int64)
    i = np.arange(12)
    t = np.arange(12) * 10
    assert random_split(u, i, t, seed=42).tolist() == [0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1]


def test_random_split_shuffles_within_users() -> None:
    u, i, t = _users([20] * 300)
    labels = random_split(u, i, t, seed=0)
    order = np.lexsort((t, u))
    position_in_time = np.tile(np.arange(20), 300)
    held_positions = position_in_time[labels[order] != TRAIN]
    assert held_positions.min() < 5 and held_positions.max() > 15  # not just the latest ones


def test_loo_holds_out_the_latest() -> None:
    u = np.array([0, 0, 0, 0, 1, 1, 2])
    i = np.array([5, 6, 7, 8, 1, 2, 3])
    t = np.array([40, 10, 30, 20, 5, 9, 1])
    assert loo_split(u, i, t).tolist() == [TEST, TRAIN, VALID, TRAIN, TRAIN, TEST, TRAIN]
