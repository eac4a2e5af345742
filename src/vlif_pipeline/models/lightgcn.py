"""LightGCN (He et al. 2020): ID embeddings smoothed over the normalised user-item graph."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import torch

from vlif_pipeline.models.base import Recommender, bpr_loss, dot_scores, l2_penalty, xavier_embedding
from vlif_pipeline.models.propagation import layer_mean_rows, propagate
from vlif_pipeline.registry import MODELS

if TYPE_CHECKING:
    from vlif_pipeline.training.data import TrainData


class LightGCN(Recommender):
    """Final embedding = mean over layers 0..L of A^l E, with E (U+I, d) the ID embeddings.

    Training propagates the whole graph for every batch (the graph is symmetric, so the backward
    reuses it as its own transpose); evaluation caches the propagation once per pass.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = MODELS["lightgcn"].defaults
    graphable = True

    def __init__(self, data: TrainData, params: dict[str, Any]) -> None:
        super().__init__(data, params)
        self.embedding = xavier_embedding(data.n_users + data.n_items, int(self.hparams["embedding_dim"]))
        self.n_layers = int(self.hparams["n_layers"])
        self.adj = data.user_item

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        nodes = torch.cat([users, pos + self.n_users, neg + self.n_users])
        final = layer_mean_rows(self.adj, self.embedding.weight, self.n_layers, nodes, self.adj)
        u, p, n = final.split(users.shape[0])
        bpr = bpr_loss((u * p).sum(1), (u * n).sum(1))
        reg = self.hparams["reg_weight"] * l2_penalty(*self.embedding(nodes).split(users.shape[0]))
        return {"loss": bpr + reg, "bpr": bpr, "reg": reg}

    def _propagate_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user (U, d) and item (I, d) embeddings."""
        final = torch.stack(propagate(self.adj, self.embedding.weight, self.n_layers, self.adj)).mean(0)
        users, items = final.split([self.n_users, self.n_items])
        return users, items

    def prepare_eval(self) -> None:
        self._cache = self._propagate_all()

    def score_users(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        user_emb, item_emb = self._cache if self._cache is not None else self._propagate_all()
        return dot_scores(user_emb[users], item_emb, out)
