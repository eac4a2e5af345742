"""Full-ranking evaluator: masking, skipped users, batching, against a per-user reference."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vlif_pipeline.models.base import Recommender
from vlif_pipeline.training.evaluator import Evaluator, top_k


class FixedScores(Recommender):
    """A model whose scores are a given (U, I) matrix."""

    def __init__(self, scores: np.ndarray) -> None:
        super().__init__(SimpleNamespace(n_users=scores.shape[0], n_items=scores.shape[1]), {})
        self.scores = torch.as_tensor(scores, dtype=torch.float32)

    def score_users(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.scores[users].clone() if out is None else torch.index_select(self.scores, 0, users, out=out)


def binary(rows: dict[int, list[int]], shape: tuple[int, int]) -> sp.csr_matrix:
    pairs = [(u, i) for u, items in rows.items() for i in items]
    u, i = zip(*pairs) if pairs else ((), ())
    return sp.csr_matrix((np.ones(len(pairs), dtype=np.float32), (u, i)), shape=shape)


def test_hand_computed_with_masking_and_skipped_users() -> None:
    shape = (4, 6)
    train = binary({0: [0], 1: [1, 2], 2: [3]}, shape)  # user 3 never seen in training
    target = binary({0: [2, 4], 2: [5], 3: [0]}, shape)  # user 1 has no target item
    scores = np.array([[9, 8, 7, 6, 5, 4], [0] * 6, [0, 1, 2, 3, 4, 5], [9, 0, 0, 0, 0, 0]], dtype=np.float32)
    evaluator = Evaluator(train, target, torch.device("cpu"), ks=(2, 5))
    assert evaluator.n_users == 2
    out = evaluator.evaluate(FixedScores(scores))
    # user 0 ranks 1,2,3,4,5 (item 0 masked): hits at ranks 2 and 4 of |T| = 2; user 2 ranks 5,4,2,...: hit at 1
    assert out["recall@2"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["recall@5"] == pytest.approx(1.0)
    assert out["precision@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    ndcg_u0 = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert out["ndcg@5"] == pytest.approx((ndcg_u0 + 1.0) / 2)
    assert out["map@5"] == pytest.approx(((1 / 2 + 2 / 4) / 2 + 1.0) / 2)


def reference(scores: np.ndarray, train: sp.csr_matrix, target: sp.csr_matrix, k: int) -> dict[str, float]:
    """Per-user loop, straight from the definitions."""
    sums = {"recall": 0.0, "ndcg": 0.0, "precision": 0.0, "map": 0.0}
    users = 0
    for u in range(scores.shape[0]):
        relevant = set(target[u].indices)
        if not relevant or train[u].nnz == 0:
            continue
        users += 1
        row = scores[u].astype(np.float64).copy()
        row[train[u].indices] = -np.inf
        ranked = sorted(range(row.size), key=lambda i: (-row[i], i))[:k]
        rel = [1.0 if i in relevant else 0.0 for i in ranked]
        best = min(len(relevant), k)
        sums["recall"] += sum(rel) / len(relevant)
        sums["precision"] += sum(rel) / k
        sums["ndcg"] += sum(r / math.log2(j + 2) for j, r in enumerate(rel)) / sum(
            1 / math.log2(j + 2) for j in range(best)
        )
        sums["map"] += sum(r * sum(rel[: j + 1]) / (j + 1) for j, r in enumerate(rel)) / best
    return {f"{name}@{k}": total / users for name, total in sums.items()}


@pytest.mark.parametrize(("batch_size", "n_items"), [(1, 40), (7, 40), (4096, 40), (16, 1000)])
def test_matches_per_user_reference_for_any_batch_size(batch_size: int, n_items: int) -> None:
    """1000 items take the blocked top-k path (top_k), 40 items plain torch.topk."""
    rng = np.random.default_rng(3)
    n_users = 60
    dense = rng.random((n_users, n_items))
    train = sp.csr_matrix(dense < 0.2, dtype=np.float32)
    held_out = (dense >= 0.2) & (dense < 0.2 + 10 / n_items)  # many users with |T| > 5
    held_out[5] = False  # a user without target items is skipped
    target = sp.csr_matrix(held_out, dtype=np.float32)
    scores = rng.standard_normal((n_users, n_items)).astype(np.float32)
    out = Evaluator(train, target, torch.device("cpu"), batch_size=batch_size, ks=(5, 10)).evaluate(FixedScores(scores))
    for k in (5, 10):
        for key, value in reference(scores, train, target, k).items():
            assert out[key] == pytest.approx(value, rel=1e-9), key


def test_nan_scores_never_count_as_hits() -> None:
    train = binary({0: [0]}, (1, 4))
    target = binary({0: [1]}, (1, 4))
    out = Evaluator(train, target, torch.device("cpu"), ks=(2,)).evaluate(FixedScores(np.full((1, 4), np.nan)))
    assert out["recall@2"] == 0.0


def test_k_larger_than_the_catalogue() -> None:
    train = binary({0: [0]}, (1, 3))
    target = binary({0: [2]}, (1, 3))
    out = Evaluator(train, target, torch.device("cpu"), ks=(2, 5)).evaluate(FixedScores(np.array([[3.0, 2.0, 1.0]])))
    assert out["recall@2"] == pytest.approx(1.0)
    assert out["precision@5"] == pytest.approx(1 / 5)
    assert out["ndcg@2"] == pytest.approx(1 / math.log2(3))


@pytest.mark.parametrize("n_items", [7050, 4000, 4001])
def test_blocked_top_k_returns_torch_topk_values(n_items: int) -> None:
    """Ties, -inf (masked), NaN and a width that is not a multiple of the block: same values, valid columns."""
    generator = torch.Generator().manual_seed(n_items)
    scores = torch.randn(64, n_items, generator=generator)
    scores[torch.rand(64, n_items, generator=generator) < 0.01] = float("-inf")
    scores[3, :] = float("-inf")  # a row with nothing left
    scores[4, :] = 1.0  # a row of ties
    scores[5, :40] = 7.0  # ties inside the top k
    scores[6, 17] = float("nan")
    values, columns = top_k(scores, 50)
    expected, _ = torch.topk(scores, 50, dim=1)
    torch.testing.assert_close(values, expected, equal_nan=True)
    torch.testing.assert_close(scores.gather(1, columns), values, equal_nan=True)
    assert all(len(set(row)) == 50 for row in columns.tolist()), "a column was picked twice"
