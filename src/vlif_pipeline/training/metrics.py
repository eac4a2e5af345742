"""Top-K ranking metrics per user, from the hit pattern of a ranked list.

Definitions (MMRec / RecBole conventions, see docs/training.md): with rel_j = 1 when the item at
rank j is relevant, hits@K = sum_{j<=K} rel_j and T the user's relevant items,
- Recall@K = hits@K / |T| (not capped at K, so a user with |T| > K cannot reach 1);
- Precision@K = hits@K / K;
- NDCG@K = DCG@K / IDCG@K, DCG@K = sum_j rel_j / log2(j + 1), IDCG over min(|T|, K) relevant items;
- MAP@K = (1 / min(|T|, K)) * sum_{j<=K} rel_j * Precision@j.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

KS: tuple[int, ...] = (5, 10, 20, 50)
NAMES: tuple[str, ...] = ("recall", "ndcg", "precision", "map")


def metric_keys(ks: Sequence[int] = KS) -> list[str]:
    """Names of the metrics, e.g. ``recall@20``, in a stable order."""
    return [f"{name}@{k}" for name in NAMES for k in ks]


def ranking_metrics(hits: torch.Tensor, n_relevant: torch.Tensor, ks: Sequence[int] = KS) -> dict[str, torch.Tensor]:
    """Per-user metric values (B,) for every K in ``ks``.

    hits: (B, M) bool or float, hits[b, j] = item at rank j + 1 is relevant, M >= max(ks);
    n_relevant: (B,) number of relevant items per user (>= 1).
    """
    width = hits.shape[1]
    if max(ks) > width:
        raise ValueError(f"hits has {width} ranks but K={max(ks)} was requested")
    if bool((n_relevant < 1).any()):
        raise ValueError("every user needs at least one relevant item")
    rel = hits.to(torch.float64)
    n_rel = n_relevant.to(torch.float64)
    ranks = torch.arange(1, width + 1, dtype=torch.float64, device=hits.device)
    discounts = 1.0 / torch.log2(ranks + 1.0)
    cum_hits = rel.cumsum(1)
    dcg = (rel * discounts).cumsum(1)
    ideal = discounts.cumsum(0)
    ap_sum = (rel * cum_hits / ranks).cumsum(1)
    out: dict[str, torch.Tensor] = {}
    for k in ks:
        found = cum_hits[:, k - 1]
        best = torch.clamp(n_rel, max=k)
        out[f"recall@{k}"] = found / n_rel
        out[f"ndcg@{k}"] = dcg[:, k - 1] / ideal[best.long() - 1]
        out[f"precision@{k}"] = found / k
        out[f"map@{k}"] = ap_sum[:, k - 1] / best
    return out
