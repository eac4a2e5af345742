"""The blocked item-item kNN equals a dense brute force exactly, ties and duplicates included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from vlif_pipeline.graphs import item_knn
from vlif_pipeline.graphs.item_knn import cosine_topk, mixed_graph, neighbour_lists, normalise_rows_


def lattice_features(n: int, seed: int) -> np.ndarray:
    """(n, 16) rows with 1, 4 or 16 entries of +-1 (norms 1, 2, 4), some zero, duplicated or scaled.

    Normalised entries are +-1, +-1/2 or +-1/4, so every cosine is exact in float32 and float64 and
    exact ties are everywhere: the ranking must come from the tie rule, not from rounding luck.
    """
    rng = np.random.default_rng(seed)
    x = np.zeros((n, 16), dtype=np.float32)
    for row in range(n):
        nnz = rng.choice([1, 4, 16])
        cols = rng.choice(16, size=nnz, replace=False)
        x[row, cols] = rng.choice([-1.0, 1.0], size=nnz)
    x[rng.choice(n, size=3, replace=False)] = 0.0
    sources = rng.choice(n, size=n // 5, replace=False)
    targets = rng.choice(n, size=n // 5, replace=False)
    x[targets] = x[sources] * rng.choice([1.0, 2.0], size=(n // 5, 1)).astype(np.float32)
    return x


def brute_force(features: np.ndarray, k: int, self_loop: str) -> np.ndarray:
    """Dense float64 reference: rank others by (cosine desc, index asc); include adds self first."""
    x = features.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    n = len(x)
    keep = k - 1 if self_loop == "include" else k
    ranked = np.stack([np.lexsort((np.arange(n), -sim[r]))[:keep] for r in range(n)])
    if self_loop == "include":
        ranked = np.concatenate([np.arange(n)[:, None], ranked], axis=1)
    return ranked


def run_lists(features: np.ndarray, k: int, self_loop: str, block: int) -> np.ndarray:
    return neighbour_lists(features.copy(), k, self_loop, block, torch.device("cpu"))


@pytest.mark.parametrize("block", [1, 4, 16, 53, 1000])
@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("self_loop", ["include", "exclude"])
def test_exact_against_brute_force_with_ties(block: int, k: int, self_loop: str) -> None:
    features = lattice_features(53, seed=k)
    expected = brute_force(features, k, self_loop)
    got = run_lists(features, k, self_loop, block)
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("k", [1, 2, 10])
def test_many_tiles_with_pruning_match_brute_force(k: int) -> None:
    """Many column tiles, so later tiles are skipped or cut to a few rows (small k prunes the most)."""
    features = np.concatenate([np.random.default_rng(8).standard_normal((1500, 16)).astype(np.float32),
                               lattice_features(300, seed=8)])
    got, expected = run_lists(features, k, "exclude", 32), brute_force(features, k, "exclude")
    # the random rows have near-ties (cosines ~1e-7 apart) that float32 products order by rounding,
    # which differs between CPUs' product kernels: there the neighbours must be equally similar
    x = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True).clip(1e-300)
    np.testing.assert_allclose(np.einsum("rd,rkd->rk", x, x[got]), np.einsum("rd,rkd->rk", x, x[expected]), atol=1e-6)
    assert (got != expected).mean() < 1e-3 and not (got != expected)[1500:].any(), "only near-ties may differ"


def test_ties_really_happen_in_the_lattice_data() -> None:
    """Guard for the test above: the data must contain boundary ties the tie rule decides."""
    x = lattice_features(53, seed=3).astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    ordered = -np.sort(-sim, axis=1)
    assert (ordered[:, 2] == ordered[:, 3]).sum() > 10


def test_duplicates_prefer_lower_index_and_self_is_kept() -> None:
    x = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float32)
    inc = run_lists(x, 2, "include", 2)
    assert inc[2].tolist() == [2, 0]  # self first, then the lowest-index duplicate
    exc = run_lists(x, 2, "exclude", 2)
    assert exc[0].tolist() == [1, 2] and exc[2].tolist() == [0, 1]


def test_gaussian_features_match_float64_reference() -> None:
    rng = np.random.default_rng(7)
    features = rng.standard_normal((300, 32)).astype(np.float32)
    np.testing.assert_array_equal(run_lists(features, 10, "include", 64), brute_force(features, 10, "include"))
    x = torch.from_numpy(features.copy())
    values, indices = cosine_topk(normalise_rows_(x), 5, block_size=37)
    f64 = features.astype(np.float64)
    f64 /= np.linalg.norm(f64, axis=1, keepdims=True)
    exact = np.take_along_axis(f64 @ f64.T, indices, axis=1)
    np.testing.assert_allclose(values, exact, atol=1e-6)
    assert (np.diff(values, axis=1) <= 0).all()


def test_zero_rows_have_cosine_zero() -> None:
    x = np.array([[0, 0], [1, 0], [-1, 0], [0, 1]], dtype=np.float32)
    values, indices = cosine_topk(normalise_rows_(torch.from_numpy(x)), 3, block_size=2)
    assert indices[0].tolist() == [1, 2, 3] and values[0].tolist() == [0.0, 0.0, 0.0]
    assert indices[1].tolist() == [0, 3, 2] and values[1].tolist() == [0.0, 0.0, -1.0]


def test_mixed_graph_weights_match_dense_mix() -> None:
    a = lattice_features(40, seed=1)
    b = np.random.default_rng(2).standard_normal((40, 8)).astype(np.float32)
    lists = [run_lists(a, 4, "include", 16), run_lists(b, 4, "include", 16)]
    graph = mixed_graph(lists, [1.0, 3.0])
    dense = np.zeros((40, 40))
    for nb, w in zip(lists, [0.25, 0.75], strict=True):
        for row in range(40):
            dense[row, nb[row]] += w / 4
    np.testing.assert_allclose(graph.toarray(), dense, atol=1e-7)
    np.testing.assert_allclose(np.asarray(graph.sum(axis=1)).ravel(), 1.0, atol=1e-6)
    assert graph.dtype == np.float32


def test_cli_writes_the_mixed_graph(tmp_path: Path) -> None:
    visual = np.random.default_rng(0).standard_normal((30, 12)).astype(np.float32)
    text = lattice_features(30, seed=5)
    np.save(tmp_path / "v.npy", visual)
    np.save(tmp_path / "t.npy", text)
    out = tmp_path / "g" / "knn.npz"
    argv = ["--features", str(tmp_path / "v.npy"), str(tmp_path / "t.npy"), "--weights", "0.5", "0.5",
            "--k", "5", "--out", str(out), "--block-size", "8", "--device", "cpu"]
    assert item_knn.main(argv) == 0
    expected = mixed_graph([brute_force(visual, 5, "include"), brute_force(text, 5, "include")], [0.5, 0.5])
    got = sp.load_npz(out)
    assert got.shape == (30, 30)
    assert abs(got - expected).max() == 0


@pytest.mark.parametrize(
    ("features", "extra", "message"),
    [
        (np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32), [], "item 0 has a non-finite"),
        (np.ones((3, 2), dtype=np.float32), ["--k", "4"], "exceeds the 3 possible"),
        (np.ones(3, dtype=np.float32), [], "expected a 2-d"),
    ],
)
def test_cli_rejects_bad_input(tmp_path: Path, caplog: pytest.LogCaptureFixture, features: np.ndarray,
                               extra: list[str], message: str) -> None:
    np.save(tmp_path / "f.npy", features)
    log = tmp_path / "knn.log"
    argv = ["--features", str(tmp_path / "f.npy"), "--weights", "1", "--k", "2",
            "--out", str(tmp_path / "g.npz"), "--log", str(log), *extra]
    assert item_knn.main(argv) == 1
    assert message in log.read_text()
    assert not (tmp_path / "g.npz").exists()


@pytest.mark.parametrize("weight", ["nan", "inf"])
def test_cli_rejects_non_finite_weights(tmp_path: Path, weight: str) -> None:
    np.save(tmp_path / "f.npy", np.eye(4, dtype=np.float32))
    log = tmp_path / "knn.log"
    argv = ["--features", str(tmp_path / "f.npy"), str(tmp_path / "f.npy"), "--weights", "1", weight, "--k", "2",
            "--out", str(tmp_path / "g.npz"), "--log", str(log)]
    assert item_knn.main(argv) == 1
    assert "weights must be finite" in log.read_text()
    assert not (tmp_path / "g.npz").exists()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    features = lattice_features(200, seed=11)
    cpu = neighbour_lists(features.copy(), 10, "include", 64, torch.device("cpu"))
    gpu = neighbour_lists(features.copy(), 10, "include", 64, torch.device("cuda"))
    np.testing.assert_array_equal(cpu, gpu)
