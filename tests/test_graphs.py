"""User-item and user-user graphs against dense brute force, bad input, and no held-out leakage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import polars as pl
import pytest
import scipy.sparse as sp

from vlif_pipeline.graphs import item_knn, user_item, user_user
from vlif_pipeline.graphs.user_item import normalised_adjacency
from vlif_pipeline.graphs.user_user import user_user_graph


def write_kcore(folder: Path, u: np.ndarray, i: np.ndarray, split: np.ndarray, n_users: int, n_items: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({
        "u": u.astype(np.int64), "i": i.astype(np.int64), "rating": np.ones(len(u), dtype=np.float32),
        "timestamp": np.arange(len(u), dtype=np.int64), "split": split.astype(np.int8),
    }).write_parquet(folder / "interactions.parquet")
    (folder / "stats.json").write_text(json.dumps({"n_users": n_users, "n_items": n_items}))
    return folder


def random_binary(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density).astype(np.int32)
    dense[rng.choice(n_users, size=3, replace=False)] = 0  # users without any training item
    return sp.csr_matrix(dense)


def brute_user_user(x: np.ndarray, k: int) -> np.ndarray:
    """Dense reference: shared-item counts, self excluded, top-k by (count desc, index asc), softmax."""
    counts = (x @ x.T).astype(np.float64)
    n = len(x)
    out = np.zeros((n, n))
    for user in range(n):
        others = [v for v in range(n) if v != user and counts[user, v] > 0]
        chosen = sorted(others, key=lambda v: (-counts[user, v], v))[:k]
        if chosen:
            c = counts[user, chosen]
            out[user, chosen] = np.exp(c - c.max()) / np.exp(c - c.max()).sum()
    return out


@pytest.mark.parametrize("block", [1, 7, 1000])
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("prefilter", [True, False])
def test_user_user_equals_brute_force(block: int, k: int, prefilter: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not prefilter:  # the plain sort path, taken when the count histogram would be too large
        monkeypatch.setattr(user_user, "_HISTOGRAM_CELLS", 0)
    x = random_binary(60, 15, 0.2, seed=k)
    graph = user_user_graph(x, k, block)
    expected = brute_user_user(x.toarray(), k)
    assert graph.shape == (60, 60) and graph.dtype == np.float32
    np.testing.assert_array_equal(graph.toarray() > 0, expected > 0)
    np.testing.assert_allclose(graph.toarray(), expected, rtol=1e-6, atol=1e-7)


def test_user_user_ties_resolve_to_lower_index() -> None:
    # user 0 shares one item with each of users 1..4 and two with user 5
    x = sp.csr_matrix(np.array([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0],
                                [0, 0, 0, 1, 0], [1, 0, 0, 0, 1]], dtype=np.int32))
    row = user_user_graph(x, 3, 2).getrow(0)
    assert sorted(row.indices.tolist()) == [1, 2, 5]
    weights = dict(zip(row.indices.tolist(), row.data.tolist(), strict=True))
    assert weights[5] > weights[1] == pytest.approx(weights[2])
    assert sum(weights.values()) == pytest.approx(1.0)


def test_user_item_equals_dense_normalisation() -> None:
    r = random_binary(20, 9, 0.3, seed=4)
    graph = normalised_adjacency(r)
    a = np.zeros((29, 29))
    a[:20, 20:] = r.toarray()
    a[20:, :20] = r.toarray().T
    degree = a.sum(axis=1)
    inv = np.where(degree > 0, 1 / np.sqrt(np.maximum(degree, 1)), 0.0)
    np.testing.assert_allclose(graph.toarray(), inv[:, None] * a * inv[None, :], rtol=1e-6)
    assert graph.dtype == np.float32 and (graph != graph.T).nnz == 0


def test_user_item_cli_merges_duplicates(tmp_path: Path) -> None:
    kcore = write_kcore(tmp_path / "kcore", np.array([0, 0, 1, 1]), np.array([0, 0, 1, 0]),
                        np.array([0, 0, 0, 0]), 2, 2)
    assert user_item.main(["--kcore-dir", str(kcore), "--out", str(tmp_path / "ui.npz")]) == 0
    graph = sp.load_npz(tmp_path / "ui.npz").toarray()
    # user 0 - item 0 once despite two rows: degrees u0=1, u1=2, i0=2, i1=1
    assert graph[0, 2] == pytest.approx(1 / np.sqrt(2))
    assert graph[1, 3] == pytest.approx(1 / np.sqrt(2))
    assert graph[1, 2] == pytest.approx(1 / 2)


@pytest.mark.parametrize(
    ("u", "i", "split", "message"),
    [
        ([0, 5], [0, 1], [0, 0], "row 1: u=5 outside 0..2"),
        ([0, 1], [0, -1], [0, 0], "row 1: i=-1 outside 0..3"),
        ([0, 1], [0, 1], [0, 3], "row 1: split=3 is not one of"),
        ([0, 1], [0, 1], [1, 2], "no training interactions"),
    ],
)
def test_graph_clis_reject_bad_interactions(tmp_path: Path, u: list[int], i: list[int], split: list[int],
                                            message: str) -> None:
    kcore = write_kcore(tmp_path / "kcore", np.array(u), np.array(i), np.array(split), 3, 4)
    for module, extra in ((user_item, []), (user_user, ["--k", "2"])):
        log = tmp_path / f"{module.__name__}.log"
        argv = ["--kcore-dir", str(kcore), "--out", str(tmp_path / "g.npz"), "--log", str(log), *extra]
        assert module.main(argv) == 1
        assert message in log.read_text()
    assert not (tmp_path / "g.npz").exists()


def test_missing_column_is_one_line(tmp_path: Path) -> None:
    kcore = write_kcore(tmp_path / "kcore", np.array([0]), np.array([0]), np.array([0]), 1, 1)
    path = kcore / "interactions.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["split"]), path)
    log = tmp_path / "log"
    assert user_item.main(["--kcore-dir", str(kcore), "--out", str(tmp_path / "g.npz"), "--log", str(log)]) == 1
    assert "interactions.parquet: missing column(s) split (has u, i" in log.read_text()
    assert len(log.read_text().strip().splitlines()) == 1


def test_fractional_ids_are_refused_not_truncated(tmp_path: Path) -> None:
    kcore = write_kcore(tmp_path / "kcore", np.array([0, 1]), np.array([0, 1]), np.array([0, 0]), 2, 2)
    table = pq.read_table(kcore / "interactions.parquet")
    table = table.set_column(table.schema.get_field_index("u"), "u", pa.array([0.0, 0.5]))
    pq.write_table(table, kcore / "interactions.parquet")
    log = tmp_path / "log"
    assert user_item.main(["--kcore-dir", str(kcore), "--out", str(tmp_path / "g.npz"), "--log", str(log)]) == 1
    assert "column 'u' has type double, not an integer type" in log.read_text()


def test_missing_stats_is_a_clear_error(tmp_path: Path) -> None:
    kcore = write_kcore(tmp_path / "kcore", np.array([0]), np.array([0]), np.array([0]), 1, 1)
    (kcore / "stats.json").write_text(json.dumps({"n_users": 1}))
    log = tmp_path / "log"
    assert user_item.main(["--kcore-dir", str(kcore), "--out", str(tmp_path / "g.npz"), "--log", str(log)]) == 1
    assert "'n_items' must be a positive integer" in log.read_text()


def test_no_held_out_interaction_reaches_any_graph(tmp_path: Path) -> None:
    """Valid/test rows are made distinctive: item 9 and users 7-8 occur ONLY in held-out rows, and
    users 0/1 share items only through held-out rows. Every graph must be identical to the one built
    from the training rows alone, and identical whatever the held-out rows are."""
    rng = np.random.default_rng(0)
    train_u = np.array([0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6])
    train_i = np.array([0, 1, 2, 3, 0, 4, 2, 5, 1, 6, 3, 7, 8, 4])
    held_u = np.array([0, 1, 7, 8, 7, 8, 0, 1, 2])
    held_i = np.array([9, 9, 9, 9, 0, 0, 2, 0, 9])
    held_split = np.array([1, 2, 1, 2, 1, 2, 2, 1, 1])
    order = rng.permutation(len(train_u) + len(held_u))
    full = write_kcore(tmp_path / "full", np.concatenate([train_u, held_u])[order],
                       np.concatenate([train_i, held_i])[order],
                       np.concatenate([np.zeros(len(train_u)), held_split])[order], 9, 10)
    train_only = write_kcore(tmp_path / "train", train_u, train_i, np.zeros(len(train_u)), 9, 10)
    other_held = write_kcore(tmp_path / "other", np.concatenate([train_u, [7, 8, 0]]),
                             np.concatenate([train_i, [1, 1, 9]]), np.concatenate([np.zeros(len(train_u)), [1, 2, 2]]),
                             9, 10)

    def graphs(kcore: Path, tag: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        ui, uu = tmp_path / f"ui_{tag}.npz", tmp_path / f"uu_{tag}.npz"
        assert user_item.main(["--kcore-dir", str(kcore), "--out", str(ui)]) == 0
        assert user_user.main(["--kcore-dir", str(kcore), "--k", "3", "--out", str(uu)]) == 0
        return sp.load_npz(ui), sp.load_npz(uu)

    ui_full, uu_full = graphs(full, "full")
    for tag, kcore in (("train", train_only), ("other", other_held)):
        ui, uu = graphs(kcore, tag)
        assert abs(ui_full - ui).max() == 0 and abs(uu_full - uu).max() == 0
    dense_ui = ui_full.toarray()
    for user, item in zip(held_u, held_i, strict=True):
        if not ((train_u == user) & (train_i == item)).any():
            assert dense_ui[user, 9 + item] == 0 and dense_ui[9 + item, user] == 0
    assert dense_ui[:, 9 + 9].sum() == 0 and dense_ui[7:9].sum() == 0
    assert uu_full[7:9].nnz == 0 and uu_full[:, 7:9].nnz == 0
    assert uu_full[0, 1] == 0 and uu_full[1, 0] == 0  # they only meet on held-out items 9 and 0

    # The item graph's inputs are the feature files alone: same features, same graph, whatever
    # the interactions; the stage has no interaction input at all.
    features = rng.standard_normal((10, 6)).astype(np.float32)
    np.save(tmp_path / "f.npy", features)
    outs = []
    for tag in ("a", "b"):
        out = tmp_path / f"knn_{tag}.npz"
        assert item_knn.main(["--features", str(tmp_path / "f.npy"), "--weights", "1", "--k", "3",
                              "--out", str(out)]) == 0
        outs.append(sp.load_npz(out))
    assert abs(outs[0] - outs[1]).max() == 0
    with pytest.raises(SystemExit):  # the stage has no way to be given interactions
        item_knn.main(["--features", str(tmp_path / "f.npy"), "--weights", "1", "--k", "3",
                       "--out", str(tmp_path / "x.npz"), "--kcore-dir", str(full)])
