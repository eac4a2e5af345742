"""VLIF (paper section 2): per-modality user-item propagation, information-aware fusion,
item-item and user-user refinement. Decisions where the paper is silent: docs/model.md.

Shapes: U users, I items, N = U + I graph nodes, d = ``embedding_dim``, T = ``n_layers`` + 1 tokens
per node and modality, P = number of fused parts (pooling 1, concat 2, weighted_concat 2, pid 3),
D = P * d for concatenations (d for pooling), B = batch size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from vlif_pipeline.models import native
from vlif_pipeline.models.base import (
    Recommender,
    bpr_loss,
    dot_scores,
    l2_penalty,
    normalize_rows,
    xavier_embedding,
)
from vlif_pipeline.models.fusion import (
    RedundancyEncoder,
    SynergyEstimator,
    first_occurrences,
    info_nce,
    info_nce_all,
    remove_component,
)
from vlif_pipeline.models.propagation import layer_rows, propagate, propagate_rows, spmm, transpose
from vlif_pipeline.registry import FUSIONS, MODELS, PARAM_CHOICES

if TYPE_CHECKING:
    from vlif_pipeline.training.data import TrainData

_PARTS = {"pooling": 1, "concat": 2, "weighted_concat": 2, "pid": 3}


@dataclass
class _Fused:
    """Fused embeddings of R_u users and R_i items, and for pid what the contrastive losses align.

    users (R_u, D), items (R_i, D); rows of the others: users first, then items (R = R_u + R_i).
    synergy_views: h_{v->t}, h_{t->v}, each (R, d); redundancy (R, d): r;
    redundancy_encoded (3, R, d): the redundancy encoder's outputs before its projection g, which
    gives the views h, h_v, h_t where the contrastive loss needs them.
    """

    users: torch.Tensor
    items: torch.Tensor
    synergy_views: tuple[torch.Tensor, torch.Tensor] | None = None
    redundancy: torch.Tensor | None = None
    redundancy_encoded: torch.Tensor | None = None
    views_per_item: bool = False  # placement "before": the views' rows are all I items, not the R nodes


def _feature_mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Item features (I, in_dim) -> (I, out_dim), the two-layer LeakyReLU MLP of DRAGON-style encoders."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, out_dim))


@dataclass
class _Homogeneous:
    """One homogeneous graph (n, n) (item kNN or user-user), its transpose and its layer count.

    reverse: the transpose's sparsity pattern with unit weights, used to find the nodes a batch
    reaches (structural, so that an edge of weight 0 is still followed); None when not restricting.
    """

    graph: torch.Tensor
    graph_t: torch.Tensor
    n_layers: int
    reverse: torch.Tensor | None


def _reach(reverse: torch.Tensor, seeds: torch.Tensor, hops: int) -> list[torch.Tensor]:
    """[R_1, ..., R_hops]: R_l holds the sorted ids (R_l,) that rows ``seeds`` (B,) read within l steps.

    reverse: the graph's transposed unit pattern (n, n). Each R_l includes the seeds and R_{l-1}.
    """
    mask = torch.zeros(reverse.shape[0], 1, device=seeds.device)
    mask[seeds] = 1.0
    levels = []
    for _ in range(hops):
        mask = (mask + reverse @ mask).clamp_(max=1.0)
        levels.append(torch.nonzero(mask.squeeze(1)).squeeze(1))
    return levels


def _subgraph(graph: torch.Tensor, row_ids: torch.Tensor, col_ids: torch.Tensor) -> torch.Tensor:
    """graph[row_ids][:, col_ids] as sparse CSR (len(row_ids), len(col_ids)).

    graph (n, n) CSR; row_ids (r,) any order, repeats allowed; col_ids (c,) sorted and containing
    every column the requested rows use.
    """
    crow = graph.crow_indices()
    starts = crow[row_ids]
    counts = crow[row_ids + 1] - starts
    new_crow = torch.zeros(row_ids.numel() + 1, dtype=torch.int64, device=graph.device)
    torch.cumsum(counts, 0, out=new_crow[1:])
    entries = torch.arange(int(new_crow[-1]), device=graph.device) + torch.repeat_interleave(
        starts - new_crow[:-1], counts
    )
    position = torch.empty(graph.shape[1], dtype=torch.int64, device=graph.device)
    position[col_ids] = torch.arange(col_ids.numel(), device=graph.device)
    return torch.sparse_csr_tensor(
        new_crow,
        position[graph.col_indices()[entries]],
        graph.values()[entries],
        size=(row_ids.numel(), col_ids.numel()),
        check_invariants=False,
    )


class VLIF(Recommender):
    """Vision-language and information-aware fusion recommender.

    Per modality m in {text, vision}: item features -> MLP -> d; learned user embeddings; the
    L2-normalised layer-0 embeddings of all N nodes are propagated L times over the user-item
    graph, giving T = L + 1 tokens per node, whose sum is the modality embedding (eq. 2). The
    fusion (``params["fusion"]``) turns each node's tokens into a fused embedding: ``pid`` is the
    paper's [t || s || v'] (users weight the three parts by a per-user softmax), ``pooling`` is
    (t + v) / 2, ``concat`` [t || v], ``weighted_concat`` [w0 t || w1 v] for users. Finally
    z = f + S^L f over the item-item graph (items) and the user-user graph (users); score z_u . z_i.

    With ``restrict`` (default ``auto``: on CPU), training runs the fusion only on the nodes the
    batch's homogeneous propagation reads and propagates over those nodes' sub-graphs; the loss and
    gradients equal the full computation's (tested) at a fraction of its cost.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = MODELS["vlif"].defaults

    def __init__(self, data: TrainData, params: dict[str, Any]) -> None:
        super().__init__(data, params)
        hp = self.hparams
        if hp["fusion"] not in FUSIONS:
            raise ValueError(f"VLIF: fusion must be one of {tuple(FUSIONS)}, got {hp['fusion']!r}")
        if data.text is None or data.visual is None:
            raise ValueError("VLIF needs both text and visual item features")
        if not float(hp["temperature"]) >= 0.025:
            raise ValueError(f"VLIF: temperature must be >= 0.025 (InfoNCE underflows), got {hp['temperature']}")
        for key in ("n_layers", "n_item_layers", "n_user_layers"):
            if int(hp[key]) < 0:
                raise ValueError(f"VLIF: {key} must be >= 0, got {hp[key]}")
        for key in ("placement", "negatives", "user_mix", "user_weights"):
            if hp[key] not in PARAM_CHOICES[key]:
                raise ValueError(f"VLIF: {key} must be one of {PARAM_CHOICES[key]}, got {hp[key]!r}")
        self.fusion: str = hp["fusion"]
        self.placement: str = hp["placement"]
        self.all_negatives = hp["negatives"] == "all" and self.fusion == "pid"
        self.user_scale = 0.5 if hp["user_mix"] == "mean" else 1.0
        dim = int(hp["embedding_dim"])
        self.n_layers = int(hp["n_layers"])
        self.text_features = data.text
        self.visual_features = data.visual
        self.text_mlp = _feature_mlp(data.text.shape[1], int(hp["mlp_hidden"]), dim)
        self.visual_mlp = _feature_mlp(data.visual.shape[1], int(hp["mlp_hidden"]), dim)
        self.user_text = xavier_embedding(self.n_users, dim)
        self.user_visual = xavier_embedding(self.n_users, dim)
        self.weighted = self.fusion in ("weighted_concat", "pid")
        self.raw_user_weights = hp["user_weights"] == "raw"
        if self.weighted:
            self.user_weights = xavier_embedding(self.n_users, _PARTS[self.fusion])
            if self.raw_user_weights:  # the released code: a softmax once, at initialisation
                with torch.no_grad():
                    self.user_weights.weight.copy_(torch.softmax(self.user_weights.weight, dim=1))
        if self.fusion == "pid":
            block = (dim, int(hp["n_heads"]), int(hp["ffn_dim"]), float(hp["layer_scale"]))
            self.synergy = SynergyEstimator(*block, rescale=bool(hp["rescale_synergy"]))
            self.redundancy = RedundancyEncoder(*block)
            if self.placement == "before":  # s gets its own user table to propagate with
                self.user_synergy = xavier_embedding(self.n_users, dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        if self.fusion == "pid" and data.device.type == "cpu":
            self._use_kernels(block)
        self.user_item = data.user_item
        if hp["restrict"] not in ("auto", True, False):
            raise ValueError(f"VLIF: restrict must be 'auto', true or false, got {hp['restrict']!r}")
        # restriction saves work on a CPU; on a GPU its host synchronisations cost more than the work
        self.restrict = data.device.type == "cpu" if hp["restrict"] == "auto" else bool(hp["restrict"])
        self.graphable = not self.restrict  # restriction's reach sets have data-dependent sizes
        # a missing graph or 0 layers: z = f on that side
        self.user_side = self._side(data.user_user, int(hp["n_user_layers"]))
        self.item_side = self._side(data.item_knn, int(hp["n_item_layers"]))

    def _use_kernels(self, block: tuple[int, int, int, float]) -> None:
        """Give the fusion blocks their C kernels (models/native.py), if the process-wide mode allows.

        InfoNCE's kernel is looked up where it runs (``fusion.info_nce``); it is built here so that
        its note, or its failure, comes with the others.
        """
        dim, n_heads, ffn_dim, _ = block
        native.info_nce_kernel(dim)
        n_tokens = 1 if self.placement == "before" else self.n_layers + 1
        cross = native.build(lambda: native.CrossBlockKernel(dim, n_tokens, n_heads, ffn_dim))
        redundancy = native.build(lambda: native.RedundancyKernel(dim, n_heads, ffn_dim))
        if cross is not None and redundancy is not None:
            self.synergy.vision_to_text.kernel = self.synergy.text_to_vision.kernel = cross
            self.redundancy.kernel = redundancy

    def _side(self, graph: torch.Tensor | None, n_layers: int) -> _Homogeneous | None:
        """The homogeneous graph (n, n) with what propagation and restriction need; None when unused."""
        if graph is None or n_layers == 0:
            return None
        graph_t = transpose(graph)
        reverse = None
        if self.restrict:
            reverse = torch.sparse_csr_tensor(
                graph_t.crow_indices(),
                graph_t.col_indices(),
                torch.ones_like(graph_t.values()),
                size=graph_t.shape,
                check_invariants=False,
            )
        return _Homogeneous(graph, graph_t, n_layers, reverse)

    def _tokens(self, nodes: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Text and vision tokens (R, T, d): the per-layer user-item graph outputs at graph nodes ``nodes`` (R,).

        ``nodes`` None: all N nodes.
        """
        tokens = []
        for users, mlp, features in (
            (self.user_text, self.text_mlp, self.text_features),
            (self.user_visual, self.visual_mlp, self.visual_features),
        ):
            x0 = normalize_rows(torch.cat([users.weight, mlp(features)]))  # (N, d)
            tokens.append(layer_rows(self.user_item, x0, self.n_layers, nodes, adj_t=self.user_item))  # symmetric
        return tokens[0], tokens[1]

    def _pid_before(self, nodes: torch.Tensor | None) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """The released code's placement: the fusion on each item's projected features (one token per
        modality, so attention weighs a single key), then t, s and v' each propagated over the
        user-item graph with a user table of its own; the parts at ``nodes`` (R, d) each, the views
        for all I items."""
        x_t, x_v = self.text_mlp(self.text_features), self.visual_mlp(self.visual_features)  # (I, d)
        s, h_vt, h_tv = self.synergy(x_v, x_t, x_v.unsqueeze(1), x_t.unsqueeze(1))
        encoded = self.redundancy.encode(x_v, x_t)  # (3, I, d)
        r = self.redundancy.project(encoded.mean(0))
        parts = []
        for table, item_part in ((self.user_text, x_t), (self.user_synergy, s), (self.user_visual, remove_component(x_v, r))):
            x0 = normalize_rows(torch.cat([table.weight, item_part]))
            parts.append(layer_rows(self.user_item, x0, self.n_layers, nodes, adj_t=self.user_item).sum(1))
        views = {"synergy_views": (h_vt, h_tv), "redundancy": r, "redundancy_encoded": encoded, "views_per_item": True}
        return parts, views

    def _fused(self, users: torch.Tensor | None, items: torch.Tensor | None) -> _Fused:
        """Fused embeddings of user ids ``users`` (R_u,) and item ids ``items`` (R_i,); None = all."""
        nodes = None if users is None else torch.cat([users, items + self.n_users])
        n_user_rows = self.n_users if users is None else users.numel()
        pid: dict[str, Any] = {}
        if self.fusion == "pid" and self.placement == "before":
            parts, pid = self._pid_before(nodes)
        else:
            t_tokens, v_tokens = self._tokens(nodes)
            t, v = t_tokens.sum(1), v_tokens.sum(1)  # eq. 2, (R, d) with R = R_u + R_i
            if self.fusion == "pooling":
                parts = [(t + v) / 2]
            elif self.fusion == "pid":
                s, h_vt, h_tv = self.synergy(v, t, v_tokens, t_tokens)
                encoded = self.redundancy.encode(v, t)  # (3, R, d)
                r = self.redundancy.project(encoded.mean(0))  # (R, d), the mean of the three views
                pid = {"synergy_views": (h_vt, h_tv), "redundancy": r, "redundancy_encoded": encoded}
                parts = [t, s, remove_component(v, r)]
            else:
                parts = [t, v]
        # split, not two slices: its backward is one cat instead of a zero-filled (R, d) per slice
        user_parts, item_parts = zip(*(part.split([n_user_rows, part.shape[0] - n_user_rows]) for part in parts))
        if self.weighted:
            table = self.user_weights.weight if users is None else self.user_weights(users)
            weights = table if self.raw_user_weights else torch.softmax(table, dim=1)  # (R_u, P)
            user_parts = [w.unsqueeze(1) * part for w, part in zip(weights.unbind(1), user_parts, strict=True)]
        items_fused = torch.cat(item_parts, dim=1)
        return _Fused(torch.cat(user_parts, dim=1), items_fused, **pid)

    @staticmethod
    def _needed(side: _Homogeneous | None, seeds: torch.Tensor) -> list[torch.Tensor]:
        """Reach levels [R_1, ..., R_L] of rows ``seeds`` (B,) on one side; [unique seeds] without a graph."""
        if side is None:
            return [torch.unique(seeds)]
        return _reach(side.reverse, seeds, side.n_layers)

    @staticmethod
    def _refine_rows(
        side: _Homogeneous | None,
        fused: torch.Tensor,
        levels: list[torch.Tensor] | None,
        row_ids: torch.Tensor,
    ) -> torch.Tensor:
        """Final embeddings z = f + S^L f (B, D) at ``row_ids`` (B,).

        fused (R, D) is known on levels[-1] (R,) when restricted (``levels`` from :meth:`_needed`),
        or on all n nodes when ``levels`` is None. Restricted, step l multiplies the sub-graph from
        the rows of level l to the columns of level l + 1, so only reached nodes take part.
        """
        if levels is None:
            if side is None:
                return fused.index_select(0, row_ids)
            layers = propagate_rows(side.graph, fused, side.n_layers, row_ids, adj_t=side.graph_t)
            return layers[0] + layers[-1]
        own = fused.index_select(0, torch.searchsorted(levels[-1], row_ids))
        if side is None:
            return own
        targets = [row_ids, *levels[:-1]]
        h = fused
        for target, source in zip(reversed(targets), reversed(levels), strict=True):
            h = spmm(_subgraph(side.graph, target, source), h)
        return own + h

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """BPR + lambda * (L_s + L_r) + L2 on the batch's user embeddings; users, pos, neg (B,)."""
        items = torch.cat([pos, neg])
        if self.restrict:
            user_levels = self._needed(self.user_side, users)
            item_levels = self._needed(self.item_side, items)
            if self.all_negatives:  # every item's views are needed (a superset of the reach is exact too)
                item_levels[-1] = torch.arange(self.n_items, device=users.device)
            fused = self._fused(user_levels[-1], item_levels[-1])
        else:
            user_levels = item_levels = None
            fused = self._fused(None, None)
        z_users = self.user_scale * self._refine_rows(self.user_side, fused.users, user_levels, users)
        z_pos, z_neg = self._refine_rows(self.item_side, fused.items, item_levels, items).split(users.shape[0])
        bpr = bpr_loss((z_users * z_pos).sum(1), (z_users * z_neg).sum(1))
        reg = self.hparams["reg_weight"] * l2_penalty(self.user_text(users), self.user_visual(users))
        parts = {"bpr": bpr, "reg": reg}
        total = bpr + reg
        if self.fusion == "pid":
            parts["synergy"], parts["redundancy"] = self._contrastive_terms(fused, users, pos, user_levels, item_levels)
            total = total + self.hparams["lambda"] * (parts["synergy"] + parts["redundancy"])
        return {"loss": total, **parts}

    def _contrastive_terms(
        self,
        fused: _Fused,
        users: torch.Tensor,
        pos: torch.Tensor,
        user_levels: list[torch.Tensor] | None,
        item_levels: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_s and L_r of the batch: the mean over its users' and positive items' terms, each distinct
        node once (duplicates are masked, not removed: fixed shapes). Placement ``before``: the
        items' only, as only items pass the fusion. ``negatives: all``: each item against all items."""
        item_offset = 0
        if not fused.views_per_item:
            item_offset = self.n_users if user_levels is None else user_levels[-1].numel()
        item_rows = pos if item_levels is None or fused.views_per_item else torch.searchsorted(item_levels[-1], pos)
        all_items = item_offset + torch.arange(self.n_items, device=pos.device) if self.all_negatives else None
        terms = [self._contrastive(fused, item_offset + item_rows, first_occurrences(pos), all_items, pos)]
        if not fused.views_per_item:
            user_rows = users if user_levels is None else torch.searchsorted(user_levels[-1], users)
            terms.append(self._contrastive(fused, user_rows, first_occurrences(users)))
        synergy, redundancy = zip(*terms)
        return sum(synergy) / len(terms), sum(redundancy) / len(terms)

    def _contrastive(
        self,
        fused: _Fused,
        view_rows: torch.Tensor,
        keep: torch.Tensor,
        negative_rows: torch.Tensor | None = None,
        targets: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """L_s (eq. 15) and L_r (eq. 16) among the nodes at ``view_rows`` (n,) of the views where ``keep`` (n,).

        With ``negative_rows`` (m,), each row is contrasted with the views at all of them instead,
        its positive at ``targets`` (n,) (positions in ``negative_rows``).
        """
        views = [view.index_select(0, view_rows) for view in fused.synergy_views]
        views += self.redundancy.project(fused.redundancy_encoded.index_select(1, view_rows)).unbind(0)
        pairs = ((0, 1), (2, 3), (2, 4), (3, 4))  # (h_vt, h_tv), then (h, h_v), (h, h_t), (h_v, h_t)
        temperature = float(self.hparams["temperature"])
        if negative_rows is None:
            terms = [info_nce(views[i], views[j], temperature, keep) for i, j in pairs]
        else:
            others = [view.index_select(0, negative_rows) for view in fused.synergy_views]
            others += self.redundancy.project(fused.redundancy_encoded.index_select(1, negative_rows)).unbind(0)
            terms = [info_nce_all(views[i], others[j], targets, temperature, keep) for i, j in pairs]
        return terms[0], sum(terms[1:])

    @staticmethod
    def _refine_all(side: _Homogeneous | None, fused: torch.Tensor) -> torch.Tensor:
        """z = f + S^L f for all rows; fused (n, D) -> (n, D)."""
        if side is None:
            return fused
        return fused + propagate(side.graph, fused, side.n_layers, adj_t=side.graph_t)[-1]

    def _final_all(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final embeddings of every user (U, D) and every item (I, D)."""
        fused = self._fused(None, None)
        users = self.user_scale * self._refine_all(self.user_side, fused.users)
        return users, self._refine_all(self.item_side, fused.items)

    def prepare_eval(self) -> None:
        self._cache = self._final_all()

    def score_users(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, I) of every item for users (B,)."""
        if self._cache is None:
            self._cache = self._final_all()
        user_emb, item_emb = self._cache
        return dot_scores(user_emb[users], item_emb, out)
