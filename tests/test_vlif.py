"""VLIF and its fusion modules: shapes, real attention, masking, orthogonality, training, restriction."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from vlif_pipeline.graphs.item_knn import mixed_graph, neighbour_lists
from vlif_pipeline.graphs.user_item import normalised_adjacency
from vlif_pipeline.graphs.user_user import user_user_graph
from vlif_pipeline.models.fusion import (
    CrossModalBlock,
    RedundancyEncoder,
    SynergyEstimator,
    first_occurrences,
    info_nce,
    info_nce_all,
    remove_component,
)
from vlif_pipeline.models.vlif import VLIF
from vlif_pipeline.registry import FUSIONS
from vlif_pipeline.training.data import TrainData, build_train_data

N_USERS, N_ITEMS, DIM = 60, 40, 16
SMALL = {"embedding_dim": DIM, "mlp_hidden": 32, "ffn_dim": 32, "n_heads": 2}


def tiny_data(seed: int = 0, k: int = 3, device: str = "cpu") -> TrainData:
    """60 users x 40 items, 6 interactions each, 24-d text and 20-d visual features, all graphs."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(N_USERS), 6)
    cols = np.concatenate([rng.choice(N_ITEMS, 6, replace=False) for _ in range(N_USERS)])
    train = sp.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(N_USERS, N_ITEMS))
    empty = sp.csr_matrix((N_USERS, N_ITEMS), dtype=np.float32)
    text = rng.normal(size=(N_ITEMS, 24)).astype(np.float32)
    visual = rng.normal(size=(N_ITEMS, 20)).astype(np.float32)
    neighbours = [neighbour_lists(f.copy(), k, "include", 16, torch.device("cpu")) for f in (visual, text)]
    return build_train_data(
        N_USERS,
        N_ITEMS,
        train,
        empty,
        empty,
        normalised_adjacency(train),
        text=text,
        visual=visual,
        item_knn=mixed_graph(neighbours, [0.5, 0.5]),
        user_user=user_user_graph(train, k),
        device=device,
    )


@pytest.fixture(scope="module")
def data() -> TrainData:
    return tiny_data()


def batch(seed: int = 1, size: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A fixed (users, pos, neg) batch of ``size`` triples (positives need not be true positives here)."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randint(0, N_USERS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
        torch.randint(0, N_ITEMS, (size,), generator=g),
    )


def make(data: TrainData, seed: int = 0, **params: object) -> VLIF:
    torch.manual_seed(seed)
    return VLIF(data, {**SMALL, **params})


def test_cross_modal_attention_attends_over_every_token() -> None:
    torch.manual_seed(0)
    block = CrossModalBlock(DIM, 2, 32, 0.1)
    query, tokens = torch.randn(5, DIM), torch.randn(5, 3, DIM)
    base = block(query, tokens)
    assert base.shape == (5, DIM)
    for position in range(3):
        changed = tokens.clone()
        changed[2, position] += torch.randn(DIM)
        out = block(query, changed)
        assert not torch.allclose(out[2], base[2]), f"token {position} is ignored"
        assert torch.equal(torch.cat([out[:2], out[3:]]), torch.cat([base[:2], base[3:]])), "nodes interact"


def test_synergy_is_the_mean_of_both_directions_on_the_inputs_scale() -> None:
    torch.manual_seed(0)
    cse = SynergyEstimator(DIM, 2, 32, 0.1)
    v, t, vt, tt = torch.randn(4, DIM), torch.randn(4, DIM), torch.randn(4, 3, DIM), torch.randn(4, 3, DIM)
    with torch.no_grad():
        cse.vision_to_text.gain_ffn.fill_(50.0)  # a grown gain: the raw mean would be far larger than v, t
    s, h_vt, h_tv = cse(v, t, vt, tt)
    assert s.shape == h_vt.shape == h_tv.shape == (4, DIM)
    mean = (h_vt + h_tv) / 2
    torch.testing.assert_close(torch.cosine_similarity(s, mean, dim=1), torch.ones(4))
    torch.testing.assert_close(s.norm(dim=1), (v.norm(dim=1) + t.norm(dim=1)) / 2)
    assert bool((mean.norm(dim=1) > 3 * s.norm(dim=1)).all())
    torch.testing.assert_close(h_vt, cse.vision_to_text(v, tt))
    assert not torch.allclose(h_vt, h_tv)


def test_redundancy_masks_remove_a_modality() -> None:
    torch.manual_seed(0)
    tbr = RedundancyEncoder(DIM, 2, 32, 0.1)
    v, t = torch.randn(6, DIM), torch.randn(6, DIM)
    h, h_v, h_t = tbr(v, t)
    assert h.shape == h_v.shape == h_t.shape == (6, DIM)
    h2, h_v2, h_t2 = tbr(v, t + torch.randn(6, DIM))
    assert not torch.allclose(h, h2) and not torch.allclose(h_t, h_t2)
    torch.testing.assert_close(h_v, h_v2)  # text masked: only vision reaches h_v
    h3, h_v3, h_t3 = tbr(v + torch.randn(6, DIM), t)
    assert not torch.allclose(h, h3) and not torch.allclose(h_v, h_v3)
    torch.testing.assert_close(h_t, h_t3)


def test_redundancy_equals_a_full_encoder_layer_read_at_cls() -> None:
    """The shortcut (only CLS's row, shared key/value projections) equals the plain computation."""
    torch.manual_seed(0)
    tbr = RedundancyEncoder(DIM, 2, 32, 0.1)
    v, t = torch.randn(5, DIM), torch.randn(5, DIM)
    mask_v, mask_t = tbr.masks
    expected = []
    for a, b in ((v, t), (v, mask_t.expand(5, -1)), (mask_v.expand(5, -1), t)):
        seq = torch.stack([tbr.cls.expand(5, -1), a + tbr.modality[0], b + tbr.modality[1]], dim=1)  # (5, 3, d)
        normed = tbr.norm_attn(seq)
        q = tbr.query(normed).view(5, 3, 2, DIM // 2).transpose(1, 2)
        k, val = (x.view(5, 3, 2, DIM // 2).transpose(1, 2) for x in tbr.key_value(normed).chunk(2, -1))
        att = torch.softmax(q @ k.transpose(-1, -2) / (DIM // 2) ** 0.5, dim=-1) @ val  # (5, H, 3, c)
        out = tbr.finish(seq, att.transpose(1, 2).reshape(5, 3, DIM))
        expected.append(tbr.project(out[:, 0]))
    torch.testing.assert_close(tbr(v, t), torch.stack(expected))


def test_remove_component_is_orthogonal() -> None:
    torch.manual_seed(0)
    v, r = torch.randn(10, DIM), torch.randn(10, DIM)
    unique = remove_component(v, r)
    assert (unique * r).sum(1).abs().max() < 1e-5
    torch.testing.assert_close(remove_component(r, r), torch.zeros_like(r), atol=1e-6, rtol=0)
    torch.testing.assert_close(v - unique, ((v * r).sum(1, keepdim=True) / (r * r).sum(1, keepdim=True)) * r)


def test_info_nce_rewards_alignment() -> None:
    torch.manual_seed(0)
    a = torch.randn(16, DIM)
    assert info_nce(a, a, 0.2) < info_nce(a, torch.randn(16, DIM), 0.2)
    e = torch.eye(2)  # cosine 1 to the positive, 0 to the negative: -log(e^5 / (e^5 + e^0)) both ways
    torch.testing.assert_close(info_nce(e, 3 * e, 0.2), torch.tensor(np.log1p(np.exp(-5.0)), dtype=torch.float32))


def test_first_occurrences_marks_each_distinct_value_once() -> None:
    ids = torch.tensor([3, 1, 3, 2, 1, 1, 7])
    assert first_occurrences(ids).tolist() == [True, True, False, True, False, False, True]
    assert first_occurrences(torch.tensor([], dtype=torch.int64)).tolist() == []


def test_masked_info_nce_equals_info_nce_of_the_kept_rows() -> None:
    """Masking duplicates (fixed shapes, CUDA-graph safe) gives the loss and gradients of removing them."""
    torch.manual_seed(0)
    ids = torch.tensor([4, 0, 4, 2, 0, 5, 2, 1])
    table_a, table_b = torch.randn(6, DIM, requires_grad=True), torch.randn(6, DIM, requires_grad=True)
    masked = info_nce(table_a[ids], table_b[ids], 0.2, first_occurrences(ids))
    (grad_masked,) = torch.autograd.grad(masked, table_a)
    distinct = torch.unique(ids)
    plain = info_nce(table_a[distinct], table_b[distinct], 0.2)
    (grad_plain,) = torch.autograd.grad(plain, table_a)
    torch.testing.assert_close(masked, plain)
    torch.testing.assert_close(grad_masked, grad_plain)
    all_rows = torch.ones(ids.numel(), dtype=torch.bool)
    torch.testing.assert_close(info_nce(table_a[ids], table_b[ids], 0.2, all_rows), info_nce(table_a[ids], table_b[ids], 0.2))


def test_info_nce_and_its_gradients_equal_the_cross_entropy_definition() -> None:
    """info_nce and its gradients against autograd through plain cross-entropy, masked rows included."""
    torch.manual_seed(0)
    a, b = torch.randn(7, DIM, dtype=torch.float64), torch.randn(7, DIM, dtype=torch.float64)
    keep = torch.tensor([True, True, False, True, True, False, True])

    def reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        f = torch.nn.functional
        logits = f.normalize(a[keep]) @ f.normalize(b[keep]).T / 0.2
        target = torch.arange(logits.shape[0])
        return (f.cross_entropy(logits, target) + f.cross_entropy(logits.T, target)) / 2

    ours = (a.clone().requires_grad_(), b.clone().requires_grad_())
    theirs = (a.clone().requires_grad_(), b.clone().requires_grad_())
    loss, expected = info_nce(*ours, 0.2, keep), reference(*theirs)
    torch.testing.assert_close(loss, expected)
    (3.0 * loss).backward()
    (3.0 * expected).backward()
    for got, want in zip(ours, theirs, strict=True):
        torch.testing.assert_close(got.grad, want.grad)
    small = (a[:4].clone().requires_grad_(), b[:4].clone().requires_grad_())
    assert torch.autograd.gradcheck(lambda x, y: info_nce(x, y, 0.2, keep[:4]), small)


@pytest.mark.parametrize(("fusion", "width"), [("pooling", 1), ("concat", 2), ("weighted_concat", 2), ("pid", 3)])
def test_shapes_and_loss_parts(data: TrainData, fusion: str, width: int) -> None:
    model = make(data, fusion=fusion)
    out = model.loss(*batch())
    expected = {"loss", "bpr", "reg"} | ({"synergy", "redundancy"} if fusion == "pid" else set())
    assert set(out) == expected
    assert all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    with torch.no_grad():
        model.prepare_eval()
        users, items = model._cache
        scores = model.score_users(torch.tensor([0, 5, 7]))
    assert users.shape == (N_USERS, width * DIM) and items.shape == (N_ITEMS, width * DIM)
    assert scores.shape == (3, N_ITEMS)


def test_unique_vision_is_orthogonal_to_redundancy(data: TrainData) -> None:
    model = make(data)
    with torch.no_grad():
        text_tokens, _ = model._tokens(None)
        fused = model._fused(None, None)
    torch.testing.assert_close(fused.redundancy, model.redundancy.project(fused.redundancy_encoded).mean(0))
    r = fused.redundancy[N_USERS:]
    unique = fused.items[:, 2 * DIM :]
    cosine = (unique * r).sum(1) / (unique.norm(dim=1) * r.norm(dim=1))
    assert cosine.abs().max() < 1e-4
    torch.testing.assert_close(fused.items[:, :DIM], text_tokens[N_USERS:].sum(1))


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_trains(data: TrainData, fusion: str) -> None:
    model = make(data, fusion=fusion)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    users, pos, neg = batch(size=32)
    losses = []
    for _ in range(25):
        out = model.loss(users, pos, neg)
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.7 * losses[0], losses


RELEASED_CODE = {  # the released code's readings of the points where it differs from the paper's text
    "placement": "before", "rescale_synergy": False, "negatives": "all", "user_mix": "mean", "user_weights": "raw",
}


@pytest.mark.parametrize(
    ("fusion", "settings"),
    [("pid", {}), ("weighted_concat", {}), ("pid", RELEASED_CODE), ("pid", {"negatives": "all"}),
     ("pid", {"placement": "before"})],
)
def test_restricted_equals_full(data: TrainData, fusion: str, settings: dict) -> None:
    restricted = make(data, fusion=fusion, restrict=True, **settings)
    full = make(data, fusion=fusion, restrict=False, **settings)
    full.load_state_dict(restricted.state_dict())
    users, pos, neg = batch(size=4)
    reached = restricted._needed(restricted.user_side, users)[-1]
    assert reached.numel() < N_USERS, "the test batch must not reach every user"
    out_r, out_f = restricted.loss(users, pos, neg), full.loss(users, pos, neg)
    for key in out_r:
        torch.testing.assert_close(out_r[key], out_f[key])
    out_r["loss"].backward()
    out_f["loss"].backward()
    for (name, p_r), p_f in zip(restricted.named_parameters(), full.parameters(), strict=True):
        torch.testing.assert_close(p_r.grad, p_f.grad, msg=name)


@pytest.mark.parametrize("setting", sorted(RELEASED_CODE))
def test_each_released_code_reading_trains_and_changes_the_loss(data: TrainData, setting: str) -> None:
    """Each setting is its own switch: alone, it trains, and it changes what is computed (the raw
    user weights start where the softmax does, so only their gradients differ)."""
    paper, code = make(data, fusion="pid"), make(data, fusion="pid", **{setting: RELEASED_CODE[setting]})
    code.load_state_dict(paper.state_dict(), strict=False)  # the same weights where both have them
    if setting == "user_weights":
        with torch.no_grad():
            code.user_weights.weight.copy_(torch.softmax(paper.user_weights.weight, dim=1))
    users, pos, neg = batch(size=16)
    out, reference = code.loss(users, pos, neg), paper.loss(users, pos, neg)
    out["loss"].backward()
    reference["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    if setting == "user_weights":
        torch.testing.assert_close(out["loss"], reference["loss"])
        assert not torch.allclose(code.user_weights.weight.grad, paper.user_weights.weight.grad)
    else:
        assert not torch.equal(out["loss"].detach(), reference["loss"].detach()), setting
    with torch.no_grad():
        assert torch.isfinite(code.score_users(users)).all()


def test_all_items_negatives_equal_the_cross_entropy_over_every_item() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(5, 8), torch.randn(12, 8)
    targets = torch.tensor([3, 0, 11, 3, 7])
    keep = torch.tensor([True, True, True, False, True])
    logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.1
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(info_nce_all(a, b, targets, 0.1, keep), expected)


def test_training_scores_match_evaluation_scores(data: TrainData) -> None:
    model = make(data)
    users, pos, neg = batch()
    bpr = model.loss(users, pos, neg)["bpr"]
    with torch.no_grad():
        model.prepare_eval()
        scores = model.score_users(users)
    rows = torch.arange(users.shape[0])
    expected = torch.nn.functional.softplus(scores[rows, neg] - scores[rows, pos]).mean()
    torch.testing.assert_close(bpr.detach(), expected)


def test_training_mode_drops_the_evaluation_cache(data: TrainData) -> None:
    """Scores never come from embeddings cached before the parameters changed."""
    model = make(data)
    users = torch.arange(4)
    with torch.no_grad():
        model.eval()
        model.prepare_eval()
        before = model.score_users(users)
        model.train()
        model.user_text.weight.add_(1.0)
        model.eval()
        after = model.score_users(users)
    assert not torch.allclose(before, after)


def test_deterministic_on_cpu(data: TrainData) -> None:
    def train() -> tuple[list[float], torch.Tensor]:
        model = make(data, seed=3)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        losses = []
        for step in range(3):
            out = model.loss(*batch(seed=step, size=16))
            optimiser.zero_grad()
            out["loss"].backward()
            optimiser.step()
            losses.append(out["loss"].item())
        with torch.no_grad():
            model.prepare_eval()
            return losses, model.score_users(torch.arange(N_USERS))

    (losses_a, scores_a), (losses_b, scores_b) = train(), train()
    assert losses_a == losses_b
    assert torch.equal(scores_a, scores_b)


def test_without_homogeneous_graphs(data: TrainData) -> None:
    bare = copy.copy(data)
    bare.item_knn = None
    bare.user_user = None
    model = make(bare)
    assert torch.isfinite(model.loss(*batch())["loss"])


def test_rejects_bad_configuration(data: TrainData) -> None:
    with pytest.raises(ValueError, match="fusion"):
        make(data, fusion="sum")
    with pytest.raises(ValueError, match="unknown"):
        make(data, ssl_weight=0.1)
    with pytest.raises(ValueError, match="restrict"):
        make(data, restrict="sometimes")
    with pytest.raises(ValueError, match="temperature"):
        make(data, temperature=0.01)
    no_visual = copy.copy(data)
    no_visual.visual = None
    with pytest.raises(ValueError, match="visual"):
        make(no_visual)
