"""FREEDOM (Zhou & Shen, ACM MM 2023): a frozen item-item graph and a denoised user-item graph.

Following the paper's description:
- the item-item kNN graph built from the modalities' features is computed once and FROZEN (here
  the pipeline's ``item_knn`` file); item ID embeddings are propagated over it (``n_item_layers``)
  and added to the items' user-item graph embeddings;
- the user-item graph is DENOISED by degree-sensitive edge pruning: at the start of every epoch a
  fraction ``edge_drop`` of the training edges is removed, sampling the kept edges without
  replacement with probability proportional to 1/sqrt(d_u d_i) (edges between popular nodes are
  pruned more often), and the kept graph is renormalised; evaluation uses the full graph;
- user and item ID embeddings go through LightGCN-style propagation (mean over layers);
- each modality's features are projected to d by a linear layer and trained with an auxiliary
  BPR loss against the user embeddings (weight ``reg_weight``, the name MMRec gives it; there is
  no L2 penalty); scores use IDs only. The raw features are themselves trained
  (``trainable_features``, as in MMRec). The projection has no bias: a bias adds the same u . b to
  positive and negative and cancels in BPR;
- ``image_weight`` is the share of the image similarities in the item kNN graph (MMRec's
  ``mm_image_weight``, 0.1): the pipeline builds that graph for FREEDOM's runs and passes it in.

Training steps are graphable on CUDA: every epoch keeps the same number of edges, so each pruned
graph is written into the index and value buffers of one sparse tensor, which captured steps read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from vlif_pipeline.models.base import Recommender, bpr_loss, dot_scores, xavier_embedding
from vlif_pipeline.models.propagation import bipartite_adjacency, layer_mean_rows, propagate, transpose
from vlif_pipeline.registry import MODELS

if TYPE_CHECKING:
    from vlif_pipeline.training.data import TrainData


# When FREEDOM's modality loss projects every item's features instead of the batch's users (see
# FREEDOM._modality_scores): up to this many items per batch row, and up to WIDE_ITEMS_PER_ROW for
# features at least WIDE_FEATURES wide (such as the 4096-d CNN features)
ITEMS_PER_ROW = 1
WIDE_ITEMS_PER_ROW = 4
WIDE_FEATURES = 1024


class FREEDOM(Recommender):
    """Scores z_u . (z_i + h_i) with z from the (pruned) user-item graph, h from the item graph."""

    graphable = True

    DEFAULTS: ClassVar[dict[str, Any]] = MODELS["freedom"].defaults

    def __init__(self, data: TrainData, params: dict[str, Any]) -> None:
        super().__init__(data, params)
        if data.item_knn is None:
            raise ValueError("FREEDOM needs the item-item kNN graph (--item-knn)")
        features = [f for f in (data.text, data.visual) if f is not None]
        if not features:
            raise ValueError("FREEDOM needs at least one modality's features (--text or --visual)")
        if not 0.0 <= float(self.hparams["edge_drop"]) < 1.0:
            raise ValueError(f"FREEDOM: edge_drop must be in [0, 1), got {self.hparams['edge_drop']}")
        dim = int(self.hparams["embedding_dim"])
        self.n_layers = int(self.hparams["n_layers"])
        self.n_item_layers = int(self.hparams["n_item_layers"])
        self.embedding = xavier_embedding(data.n_users + data.n_items, dim)
        # trained features are parameters (in the checkpoint, with Adam's state); frozen ones are left
        # out of the checkpoint, as the run's inputs already hold them
        for k, feature in enumerate(features):
            if self.hparams["trainable_features"]:
                self.register_parameter(f"feature_{k}", torch.nn.Parameter(feature.clone()))
            else:
                self.register_buffer(f"feature_{k}", feature, persistent=False)
        self.n_modalities = len(features)
        self.projections = torch.nn.ModuleList(torch.nn.Linear(f.shape[1], dim, bias=False) for f in features)
        for layer in self.projections:
            torch.nn.init.xavier_uniform_(layer.weight)
        self.item_graph = data.item_knn
        self.item_graph_t = transpose(data.item_knn)
        self.full_adj = data.user_item
        coo = data.train.tocoo()
        self.edge_users = torch.from_numpy(coo.row.astype(np.int64)).to(data.device)
        self.edge_items = torch.from_numpy(coo.col.astype(np.int64)).to(data.device)
        user_degree = torch.bincount(self.edge_users, minlength=data.n_users).float()
        item_degree = torch.bincount(self.edge_items, minlength=data.n_items).float()
        self.edge_weight = (user_degree[self.edge_users] * item_degree[self.edge_items]).rsqrt()
        self.train_adj = self.full_adj
        self._pruned: torch.Tensor | None = None

    def start_epoch(self) -> None:
        """Resample the pruned training graph (degree-sensitive, without replacement).

        From the second epoch on, the new graph overwrites the first one's buffers in place (same
        row count and edge count), so a training step captured in a CUDA graph reads it.
        """
        keep = int(round(self.edge_users.numel() * (1.0 - float(self.hparams["edge_drop"]))))
        if keep >= self.edge_users.numel():
            self.train_adj = self.full_adj
            return
        kept = torch.multinomial(self.edge_weight, keep, replacement=False)
        fresh = bipartite_adjacency(self.edge_users[kept], self.edge_items[kept], self.n_users, self.n_items)
        if self._pruned is None:
            self._pruned = fresh
        else:
            for buffer, new in (
                (self._pruned.crow_indices(), fresh.crow_indices()),
                (self._pruned.col_indices(), fresh.col_indices()),
                (self._pruned.values(), fresh.values()),
            ):
                buffer.copy_(new)
        self.train_adj = self._pruned

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = users.shape[0]
        nodes = torch.cat([users, pos + self.n_users, neg + self.n_users])
        graph = layer_mean_rows(self.train_adj, self.embedding.weight, self.n_layers, nodes, self.train_adj)
        item_side = self._item_side()
        u, p, n = graph.split(batch)
        p, n = p + item_side[pos], n + item_side[neg]
        bpr = bpr_loss((u * p).sum(1), (u * n).sum(1))
        modality = sum(
            bpr_loss(*self._modality_scores(u, feat, proj.weight, pos, neg))
            for feat, proj in zip(self.features, self.projections, strict=True)
        )
        total = bpr + self.hparams["reg_weight"] * modality
        return {"loss": total, "bpr": bpr, "modality": modality}

    @property
    def features(self) -> list[torch.Tensor]:
        """Each modality's item features (I, D_m)."""
        return [getattr(self, f"feature_{k}") for k in range(self.n_modalities)]

    @staticmethod
    def _modality_scores(
        u: torch.Tensor, feat: torch.Tensor, weight: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u . (W f_pos) and u . (W f_neg), (B,) each, in the cheaper of two equal ways.

        Projecting every item (I, D) -> (I, d) and gathering d-wide rows (MMRec's way) costs I D d
        multiply-adds per product; projecting the users, u W (B, D), and gathering D-wide feature rows
        costs B D d, but each gather's backward fills an (I, D) gradient of trainable features, and
        the (B, D) products pass memory several times, which costs most when the features are wide.
        Measured per step, forward and backward, 2 threads (docs/benchmarks.md), in ms, users' way
        against items' way: B 2048, I 7050: 177 against 101 (D 4096), 4.2 against 7.2 (D 384);
        B 1024, I 7050, D 4096: 84 against 97; B 1024, I 785: 23 against 10 (D 4096), 1.7 against 1.0.
        """
        n_items, width = feat.shape
        per_row = WIDE_ITEMS_PER_ROW if width >= WIDE_FEATURES else ITEMS_PER_ROW
        if n_items <= per_row * u.shape[0]:
            rows = (feat @ weight.T).index_select(0, torch.cat([pos, neg]))
            p, n = rows.split(pos.shape[0])
            return (u * p).sum(1), (u * n).sum(1)
        query = u @ weight  # index_select: its backward adds rows, ~4x faster than indexing's index_put
        return (query * feat.index_select(0, pos)).sum(1), (query * feat.index_select(0, neg)).sum(1)

    def _item_side(self) -> torch.Tensor:
        """Item ID embeddings propagated over the frozen item-item graph: (I, d)."""
        items = self.embedding.weight[self.n_users :]
        return propagate(self.item_graph, items, self.n_item_layers, self.item_graph_t)[-1]

    def _embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user (U, d) and item (I, d) embeddings on the full user-item graph."""
        graph = torch.stack(propagate(self.full_adj, self.embedding.weight, self.n_layers, self.full_adj)).mean(0)
        users, items = graph.split([self.n_users, self.n_items])
        return users, items + self._item_side()

    def prepare_eval(self) -> None:
        self._cache = self._embeddings()

    def score_users(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        user_emb, item_emb = self._cache if self._cache is not None else self._embeddings()
        return dot_scores(user_emb[users], item_emb, out)
