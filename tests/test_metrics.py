"""Ranking metrics against hand-computed values (including a user with more relevant items than K)."""

from __future__ import annotations

import math

import pytest
import torch

from vlif_pipeline.training.metrics import metric_keys, ranking_metrics

# User A: relevant items at ranks 1 and 3, |T| = 2.  User B: ranks 2-5 relevant, |T| = 8 > K.
HITS = torch.tensor([[1, 0, 1, 0, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
N_REL = torch.tensor([2, 8])
L2, L3, L4, L5, L6 = (math.log2(x) for x in (2, 3, 4, 5, 6))


def test_recall_is_not_capped_at_k() -> None:
    out = ranking_metrics(HITS, N_REL, ks=(2, 5))
    assert out["recall@5"].tolist() == pytest.approx([2 / 2, 4 / 8])
    assert out["recall@2"].tolist() == pytest.approx([1 / 2, 1 / 8])


def test_precision_divides_by_k() -> None:
    out = ranking_metrics(HITS, N_REL, ks=(2, 5))
    assert out["precision@5"].tolist() == pytest.approx([2 / 5, 4 / 5])
    assert out["precision@2"].tolist() == pytest.approx([1 / 2, 1 / 2])


def test_ndcg_ideal_uses_min_of_relevant_and_k() -> None:
    out = ranking_metrics(HITS, N_REL, ks=(2, 5))
    a5 = (1 / L2 + 1 / L4) / (1 / L2 + 1 / L3)
    b5 = (1 / L3 + 1 / L4 + 1 / L5 + 1 / L6) / (1 / L2 + 1 / L3 + 1 / L4 + 1 / L5 + 1 / L6)
    assert out["ndcg@5"].tolist() == pytest.approx([a5, b5])
    assert out["ndcg@5"].tolist() == pytest.approx([0.919721, 0.660840], abs=1e-6)
    assert out["ndcg@2"].tolist() == pytest.approx([1 / (1 + 1 / L3), (1 / L3) / (1 + 1 / L3)])


def test_map_normalises_by_min_of_relevant_and_k() -> None:
    out = ranking_metrics(HITS, N_REL, ks=(2, 5))
    # A: (P@1 + P@3) / min(2, 5) = (1 + 2/3) / 2;  B: (1/2 + 2/3 + 3/4 + 4/5) / min(8, 5)
    assert out["map@5"].tolist() == pytest.approx([(1 + 2 / 3) / 2, (1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 5])
    assert out["map@2"].tolist() == pytest.approx([1 / 2, (1 / 2) / 2])


def test_perfect_ranking_scores_one_and_no_hit_scores_zero() -> None:
    hits = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0]], dtype=torch.bool)
    out = ranking_metrics(hits, torch.tensor([3, 1]), ks=(3, 4))
    for name in ("recall", "ndcg", "map"):
        assert out[f"{name}@3"].tolist() == pytest.approx([1.0, 0.0])
    assert out["precision@4"].tolist() == pytest.approx([0.75, 0.0])


def test_keys_and_bad_inputs() -> None:
    assert metric_keys((5, 20)) == [
        "recall@5", "recall@20", "ndcg@5", "ndcg@20", "precision@5", "precision@20", "map@5", "map@20",
    ]
    with pytest.raises(ValueError, match="ranks"):
        ranking_metrics(HITS, N_REL, ks=(10,))
    with pytest.raises(ValueError, match="relevant"):
        ranking_metrics(HITS, torch.tensor([0, 1]), ks=(5,))
