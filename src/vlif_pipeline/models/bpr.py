"""BPR-MF (Rendle et al. 2009): user and item embeddings, score = dot product."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from vlif_pipeline.models.base import Recommender, bpr_loss, dot_scores, l2_penalty, xavier_embedding
from vlif_pipeline.registry import MODELS

if TYPE_CHECKING:
    from vlif_pipeline.training.data import TrainData


class BPRMF(Recommender):
    """Matrix factorisation trained with the BPR loss plus L2 on the batch's embeddings."""

    DEFAULTS: ClassVar[dict[str, Any]] = MODELS["bpr"].defaults
    graphable = True

    def __init__(self, data: TrainData, params: dict[str, Any]) -> None:
        super().__init__(data, params)
        dim = int(self.hparams["embedding_dim"])
        self.user_emb = xavier_embedding(data.n_users, dim)
        self.item_emb = xavier_embedding(data.n_items, dim)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        u, p, n = self.user_emb(users), self.item_emb(pos), self.item_emb(neg)
        bpr = bpr_loss((u * p).sum(1), (u * n).sum(1))
        reg = self.hparams["reg_weight"] * l2_penalty(u, p, n)
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def score_users(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        return dot_scores(self.user_emb(users), self.item_emb.weight, out)
