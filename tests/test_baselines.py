"""Propagation routines and the baseline models (popularity, BPR, LightGCN, FREEDOM)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vlif_pipeline.graphs.user_item import normalised_adjacency
from vlif_pipeline.models import build_model, model_class
from vlif_pipeline.models.base import normalize_rows, row_norm
from vlif_pipeline.models.propagation import (
    _transpose_by_sort,
    bipartite_adjacency,
    layer_mean_rows,
    layer_rows,
    propagate,
    propagate_rows,
    spmm,
    to_torch_sparse,
    transpose,
)
from vlif_pipeline.training.data import TrainData
from vlif_pipeline.training.evaluator import Evaluator
from vlif_pipeline.training.sampler import TripleSampler
from vlif_pipeline.training.synthetic import make_synthetic, to_train_data
from vlif_pipeline.training.step import make_optimizer, make_step
from vlif_pipeline.training.trainer import train_epoch

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data() -> TrainData:
    return to_train_data(make_synthetic(300, 120, 3000, dim_text=16, dim_visual=16, seed=5), k=5)


def random_sparse(n: int, m: int, seed: int) -> sp.csr_matrix:
    return sp.random(n, m, density=0.2, format="csr", dtype=np.float32, random_state=seed)


def test_transpose_and_propagate_match_dense() -> None:
    a = random_sparse(30, 30, 0)
    adj = to_torch_sparse(a)
    dense = torch.from_numpy(a.toarray())
    assert torch.equal(transpose(adj).to_dense(), dense.T)
    x = torch.randn(30, 4)
    layers = propagate(adj, x, 2)
    assert len(layers) == 3
    torch.testing.assert_close(layers[2], dense @ dense @ x)
    index = torch.tensor([3, 0, 3])
    for got, want in zip(propagate_rows(adj, x, 2, index), layers, strict=True):
        torch.testing.assert_close(got, want[index])


def test_both_transposes_agree_on_a_rectangular_matrix_with_empty_rows_and_columns() -> None:
    a = random_sparse(40, 25, 2).tolil()
    a[5, :] = 0
    a[:, 7] = 0
    adj = to_torch_sparse(a.tocsr())
    by_scipy, by_sort = transpose(adj), _transpose_by_sort(adj)  # the CPU path and the other devices' path
    assert by_scipy.shape == by_sort.shape == (25, 40)
    for got, want in zip(
        (by_scipy.crow_indices(), by_scipy.col_indices(), by_scipy.values()),
        (by_sort.crow_indices(), by_sort.col_indices(), by_sort.values()),
        strict=True,
    ):
        assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(by_scipy.to_dense(), torch.from_numpy(a.toarray()).T)


@pytest.mark.parametrize("symmetric", [True, False])
def test_spmm_gradient_matches_dense_autograd(symmetric: bool) -> None:
    a = random_sparse(25, 25, 1)
    if symmetric:
        a = (a + a.T).tocsr()
    adj = to_torch_sparse(a)
    dense = torch.from_numpy(a.toarray())
    weights = torch.randn(25, 3)
    x1 = torch.randn(25, 3, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    (spmm(adj, spmm(adj, x1, adj if symmetric else None)) * weights).sum().backward()
    (dense @ (dense @ x2) * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_bipartite_adjacency_equals_the_graph_stage() -> None:
    train = sp.csr_matrix(random_sparse(12, 9, 2) > 0, dtype=np.float32)
    coo = train.tocoo()
    users, items = torch.from_numpy(coo.row.astype(np.int64)), torch.from_numpy(coo.col.astype(np.int64))
    ours = bipartite_adjacency(users, items, 12, 9)
    np.testing.assert_allclose(ours.to_dense().numpy(), normalised_adjacency(train).toarray(), rtol=1e-6)


def test_registry() -> None:
    assert model_class("lightgcn").__name__ == "LightGCN"
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        model_class("nope")


@pytest.mark.parametrize("name", ["bpr", "lightgcn", "freedom"])
def test_loss_parts_gradients_and_scores(data: TrainData, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, data, {})
    model.start_epoch()
    users, pos, neg = (torch.from_numpy(a[:64]) for a in TripleSampler(data.train, 0).epoch(1))
    parts = model.loss(users, pos, neg)
    assert "loss" in parts and all(v.dim() == 0 and torch.isfinite(v) for v in parts.values())
    parts["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        model.prepare_eval()
        assert model.score_users(torch.arange(5)).shape == (5, data.n_items)


@pytest.mark.parametrize("name", ["popularity", "bpr", "lightgcn", "freedom", "vlif"])
def test_scores_into_a_reused_buffer_equal_fresh_scores(data: TrainData, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, data, {})
    users = torch.tensor([4, 0, 9])
    buffer = torch.full((5, data.n_items), float("nan"))
    with torch.no_grad():
        model.prepare_eval()
        fresh = model.score_users(users)
        written = model.score_users(users, out=buffer[:3])
    assert written.data_ptr() == buffer.data_ptr()
    assert torch.equal(written, fresh) and torch.equal(buffer[:3], fresh)
    assert buffer[3:].isnan().all()


def test_unknown_hyperparameter_is_an_error(data: TrainData) -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        build_model("bpr", data, {"n_layers": 3})


def test_popularity_ranks_by_train_counts(data: TrainData) -> None:
    model = build_model("popularity", data, {})
    counts = np.asarray(data.train.sum(axis=0)).ravel()
    scores = model.score_users(torch.tensor([0, 1]))
    assert scores.shape == (2, data.n_items)
    assert int(scores[1].argmax()) == int(counts.argmax())
    assert not model.trainable and not list(model.parameters())


def test_popularity_cannot_be_trained(data: TrainData) -> None:
    model = build_model("popularity", data, {})
    ids = torch.zeros(2, dtype=torch.int64)
    with pytest.raises(TypeError, match="Popularity has no parameters to train"):
        model.loss(ids, ids, ids)


def test_freedom_needs_the_item_graph(data: TrainData) -> None:
    from dataclasses import replace

    with pytest.raises(ValueError, match="item-knn"):
        build_model("freedom", replace(data, item_knn=None), {})


def test_freedom_prunes_degree_sensitively(data: TrainData) -> None:
    torch.manual_seed(0)
    model = build_model("freedom", data, {"edge_drop": 0.5})
    n_edges = data.train.nnz
    kept_weight = torch.zeros(n_edges)
    for _ in range(30):
        model.start_epoch()
        adj = model.train_adj
        assert adj._nnz() == 2 * round(n_edges * 0.5)
        torch.testing.assert_close(adj.to_dense(), adj.to_dense().T)
        dense = adj.to_dense()
        kept = dense[model.edge_users, model.edge_items + data.n_users] > 0
        kept_weight += kept.float()
    rare = model.edge_weight > model.edge_weight.median()  # edges between low-degree nodes
    assert kept_weight[rare].mean() > kept_weight[~rare].mean()


def test_freedom_resamples_into_the_same_buffers(data: TrainData) -> None:
    """Each epoch's pruned graph lands in the first one's buffers (what a captured CUDA step reads)."""
    torch.manual_seed(0)
    model = build_model("freedom", data, {"edge_drop": 0.5})
    model.start_epoch()
    first = model.train_adj
    pointers = [t.data_ptr() for t in (first.crow_indices(), first.col_indices(), first.values())]
    before = first.to_dense()
    model.start_epoch()
    after = model.train_adj
    assert after is first
    assert [t.data_ptr() for t in (after.crow_indices(), after.col_indices(), after.values())] == pointers
    assert not torch.equal(after.to_dense(), before)
    torch.manual_seed(0)
    build_model("freedom", data, {"edge_drop": 0.5})  # the same initialisation draws
    keep = round(data.train.nnz * 0.5)
    torch.multinomial(model.edge_weight, keep, replacement=False)  # the first epoch's draw
    kept = torch.multinomial(model.edge_weight, keep, replacement=False)
    expected = bipartite_adjacency(model.edge_users[kept], model.edge_items[kept], data.n_users, data.n_items)
    assert torch.equal(after.to_dense(), expected.to_dense())


@pytest.mark.parametrize(
    ("n_items", "width", "items_projected"), [(6, 8, True), (20, 8, False), (20, 1024, True), (50, 1024, False)]
)
def test_freedoms_modality_scores_are_the_same_either_way(n_items: int, width: int, items_projected: bool) -> None:
    """Projecting every item's features or the batch's users: equal scores and gradients, and the
    way taken is the one the shape rule names (batch 8: items per row 1, or 4 for wide features)."""
    from vlif_pipeline.models import freedom

    g = torch.Generator().manual_seed(3)
    shapes = ((8, 4), (n_items, width), (4, width))
    u, feat, weight = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in shapes)
    pos, neg = torch.randint(0, n_items, (8,), generator=g), torch.randint(0, n_items, (8,), generator=g)
    runs = []
    for per_row in (0, 10**6):  # users' way, then items' way, whatever the width
        leaves = [t.clone().requires_grad_() for t in (u, feat, weight)]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(freedom, "ITEMS_PER_ROW", per_row)
            patch.setattr(freedom, "WIDE_ITEMS_PER_ROW", per_row)
            scores = freedom.FREEDOM._modality_scores(*leaves, pos, neg)
        (scores[0] * 2 - scores[1]).sum().backward()
        runs.append((scores, [leaf.grad for leaf in leaves]))
    torch.testing.assert_close(runs[0], runs[1])
    seen = []
    with pytest.MonkeyPatch.context() as patch:
        def gather(self: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
            seen.append(self.shape[1])  # the gathered rows' width: d (items projected) or D
            return torch.index_select(self, dim, index)

        patch.setattr(torch.Tensor, "index_select", gather)
        freedom.FREEDOM._modality_scores(u, feat, weight, pos, neg)
    assert (seen[0] == 4) == items_projected, seen


@pytest.mark.parametrize("name", ["bpr", "lightgcn", "freedom"])
def test_training_learns_the_planted_structure(data: TrainData, name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, data, {})
    evaluator = Evaluator(data.train, data.valid, data.device)
    before = evaluator.evaluate(model)["recall@20"]
    step = make_step(model, make_optimizer(model, 5e-3), 256)
    sampler = TripleSampler(data.train, 0)
    for epoch in range(1, 16):
        train_epoch(model, step, sampler, epoch, 256)
    after = evaluator.evaluate(model)["recall@20"]
    assert after > before + 0.05, (before, after)


def test_layer_mean_rows_matches_autograd_through_propagate() -> None:
    a = random_sparse(20, 20, 4)
    a = (a + a.T).tocsr()
    adj = to_torch_sparse(a)
    index = torch.tensor([0, 5, 5, 19, 3])
    weights = torch.randn(5, 3)
    x1 = torch.randn(20, 3, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    got = layer_mean_rows(adj, x1, 2, index, adj)
    want = torch.stack(propagate(adj, x2, 2)).mean(0)[index]
    torch.testing.assert_close(got, want)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)


def test_layer_rows_matches_autograd_through_propagate() -> None:
    adj = to_torch_sparse(random_sparse(20, 20, 6))  # not symmetric: the backward needs the transpose
    index = torch.tensor([5, 0, 5, 19, 3])  # repeats and any order
    for rows in (index, None):
        x1 = torch.randn(20, 4, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_(True)
        got = layer_rows(adj, x1, 2, rows)
        want = torch.stack(propagate(adj, x2, 2), 1)
        want = want if rows is None else want[rows]
        assert got.shape == want.shape == (20 if rows is None else 5, 3, 4)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(layer_rows(adj, x1.detach(), 2, rows), want)  # no-grad path
        weights = torch.randn(got.shape)
        (got * weights).sum().backward()
        (want * weights).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad)


def test_row_norm_and_normalize_rows_match_torch_with_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64)
    x[1] = 0.0  # a zero row: norm 0, gradient 0 (not NaN)
    x[2] *= 1e-14  # below eps: normalize's clamp holds it
    for ours, reference in (
        (row_norm, lambda t: t.norm(dim=-1, keepdim=True)),
        (normalize_rows, lambda t: torch.nn.functional.normalize(t, dim=-1)),
    ):
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = ours(a), reference(b)
        torch.testing.assert_close(got, want)
        weight = torch.randn_like(want)
        (got * weight).sum().backward()
        (want * weight).sum().backward()
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, b.grad)
    rows = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(row_norm, (rows,))
    assert torch.autograd.gradcheck(normalize_rows, (rows,))
