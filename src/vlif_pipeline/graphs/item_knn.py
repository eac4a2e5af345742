"""Stage ``graph-item-knn``: exact cosine top-k item-item graph, in blocks, never n x n.

Per modality m, every item's k nearest items by cosine similarity are found by scanning
(block x block) tiles of the similarity matrix, keeping each tile's exact top-k and ordering those
candidates once per block of query rows, so memory is O(n*k + block^2) while the result equals a
dense computation of the same similarities (a tile's products can round differently from a dense
product's, so two near-equal neighbours may swap between block sizes).

Decisions (also in docs/graphs.md):
- Ranking is a strict total order: higher cosine first, then the LOWER item index. Ties (duplicate
  items, equal features) therefore resolve the same way on every block size and device.
- Items with an all-zero feature row have cosine 0 to every item.
- Self-loop policy ``include`` (default, as the paper's code, where an item is its own most similar
  item): item i's neighbour set is {i} plus its k-1 best OTHER items, so self is always kept even
  when a duplicate ties with it. ``exclude``: its k best other items.
- Normalisation (as the paper's code): each modality's kNN graph is binary with k edges per row and
  is weighted 1/k (its D^-1/2 A D^-1/2 with row degree k), then the modalities are mixed,
  S = sum_m w_m A_m / k, with the weights rescaled to sum to 1. Every row of S sums to 1; an item
  that is a neighbour in several modalities gets the summed weight.

This module imports only numpy, scipy and torch, so ``benchmarks/bench_knn.py`` runs on a machine
without polars.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from vlif_pipeline.graphs.common import save_sparse
from vlif_pipeline.io import StageError, load_item_features, run_stage, setup_logging

DEFAULT_BLOCK = 8192


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; ``cuda`` without a GPU is a user error, not a fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("--device cuda requested but torch sees no CUDA device")
    return torch.device(name)


def normalise_rows_(x: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """L2-normalise the rows of float32 ``x`` (n, d) in place, chunk by chunk; zero rows stay zero."""
    tiny = torch.finfo(x.dtype).tiny
    for start in range(0, x.shape[0], chunk):
        rows = x[start : start + chunk]
        rows.div_(torch.linalg.vector_norm(rows, dim=1, keepdim=True).clamp_min_(tiny))
    return x


def _order_candidates(values: torch.Tensor, indices: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the ``keep`` best (value desc, index asc) of each row of (b, m) candidates."""
    indices, by_index = torch.sort(indices, dim=1)
    values = values.gather(1, by_index)
    values, by_value = torch.sort(values, dim=1, descending=True, stable=True)
    indices = indices.gather(1, by_value)
    return values[:, :keep], indices[:, :keep]


def _tile_topk(sim: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``keep`` set of each row of a (b, c) tile under (value desc, local index asc).

    The returned (b, min(c, keep)) values and local indices are in no particular order.

    ``torch.topk`` picks arbitrarily among equal values, so it is asked for keep+1 values: a row
    whose keep-th and (keep+1)-th values differ has a unique answer; the few rows that tie at the
    boundary take every value above the boundary plus the lowest-index values equal to it.
    """
    b, c = sim.shape
    if c <= keep:
        local = torch.arange(c, device=sim.device).expand(b, c)
        return sim, local
    values, local = torch.topk(sim, keep + 1, dim=1, largest=True, sorted=True)
    tied = torch.nonzero(values[:, keep - 1] == values[:, keep]).ravel()
    values, local = values[:, :keep].clone(), local[:, :keep].clone()
    if tied.numel():
        rows = sim[tied]
        boundary = values[tied, keep - 1].unsqueeze(1)
        above = rows > boundary
        equal = rows == boundary
        needed = keep - above.sum(dim=1, keepdim=True)
        chosen = above | (equal & (torch.cumsum(equal, dim=1) <= needed))
        cols = torch.nonzero(chosen)[:, 1].view(-1, keep)
        values[tied] = rows.gather(1, cols)
        local[tied] = cols
    return values, local


def _scan_query_block(
    x: torch.Tensor, first: int, stop: int, keep: int, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``keep`` OTHER rows for query rows [first, stop), scanning column tiles in order.

    Each tile contributes its own exact top-``keep`` to a candidate buffer (b, tiles * keep); one
    ordering at the end picks the answer, which is exact because the top-k of a union lies in the
    union of the parts' top-k. ``bound`` is a lower bound on each row's k-th best so far (the best
    k-th value of any single tile); a later tile can only matter for rows whose maximum is strictly
    above it, since a tie loses to the lower indices already seen. Far into a large matrix few rows
    pass, and only those get a top-k.
    """
    queries = x[first:stop]
    b, n = stop - first, x.shape[0]
    starts = range(0, n, block_size)
    cand_v = torch.full((b, len(starts) * keep), float("-inf"), dtype=x.dtype, device=x.device)
    cand_i = torch.full((b, len(starts) * keep), torch.iinfo(torch.int64).max, dtype=torch.int64, device=x.device)
    bound = torch.full((b,), float("-inf"), dtype=x.dtype, device=x.device)
    for tile, c0 in enumerate(starts):
        c1 = min(c0 + block_size, n)
        sim = queries @ x[c0:c1].T
        lo, hi = max(first, c0), min(stop, c1)
        if lo < hi:
            diag = torch.arange(lo, hi, device=x.device)
            sim[diag - first, diag - c0] = float("-inf")
        rows = None
        if tile > 0:
            passing = torch.nonzero(sim.amax(dim=1) > bound).ravel()
            if passing.numel() == 0:
                continue
            if 4 * passing.numel() < b:
                rows, sim = passing, sim[passing]
        tile_v, tile_i = _tile_topk(sim, keep)
        width = tile_v.shape[1]
        slots = slice(tile * keep, tile * keep + width)
        if rows is None:
            cand_v[:, slots], cand_i[:, slots] = tile_v, tile_i + c0
            if width == keep:
                torch.maximum(bound, tile_v.amin(dim=1), out=bound)
        else:
            cand_v[rows, slots], cand_i[rows, slots] = tile_v, tile_i + c0
            if width == keep:
                bound[rows] = torch.maximum(bound[rows], tile_v.amin(dim=1))
    return _order_candidates(cand_v, cand_i, keep)


def cosine_topk(
    x: torch.Tensor, keep: int, block_size: int = DEFAULT_BLOCK, progress: logging.Logger | None = None,
    query_rows: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``keep`` most cosine-similar OTHER rows of every row of L2-normalised ``x`` (n, d).

    Returns (values float32 (m, keep), indices int64 (m, keep)) for the m query rows
    ``query_rows`` = [start, stop) (default: all n), each row ordered by (similarity desc,
    index asc). Self is never among them. Peak extra memory: one (block, block) similarity tile,
    a (block, ceil(n / block) * keep) candidate buffer and the (m, keep) results.
    """
    n = x.shape[0]
    if not 1 <= keep <= n - 1:
        raise StageError(f"need 1 <= k <= n_items - 1 other neighbours, got k={keep} for {n} items")
    first, stop = query_rows or (0, n)
    out_values = np.empty((stop - first, keep), dtype=np.float32)
    out_indices = np.empty((stop - first, keep), dtype=np.int64)
    started = time.monotonic()
    last_report = started
    for q0 in range(first, stop, block_size):
        q1 = min(q0 + block_size, stop)
        best_v, best_i = _scan_query_block(x, q0, q1, keep, block_size)
        out_values[q0 - first : q1 - first] = best_v.cpu().numpy()
        out_indices[q0 - first : q1 - first] = best_i.cpu().numpy()
        now = time.monotonic()
        if progress is not None and (now - last_report > 30 or q1 == stop):
            last_report = now
            progress.info("kNN: %d/%d rows done in %.1f s", q1 - first, stop - first, now - started)
    return out_values, out_indices


def neighbour_lists(
    features: np.ndarray, k: int, self_loop: str, block_size: int, device: torch.device,
    progress: logging.Logger | None = None,
) -> np.ndarray:
    """Neighbour indices (n, k) int64 of one modality under the self-loop policy.

    ``features``: (n, d) float32 and owned by the caller's stage (normalised in place on CPU).
    """
    x = torch.from_numpy(features).to(device)
    normalise_rows_(x)
    if self_loop == "include":
        own = np.arange(features.shape[0], dtype=np.int64)[:, None]
        if k == 1:
            return own
        _, others = cosine_topk(x, k - 1, block_size, progress)
        return np.concatenate([own, others], axis=1)
    _, others = cosine_topk(x, k, block_size, progress)
    return others


def mixed_graph(neighbours: Sequence[np.ndarray], weights: Sequence[float]) -> sp.csr_matrix:
    """S = sum_m w_m A_m / k as float32 CSR (n, n); ``neighbours[m]`` is (n, k) int64.

    ``weights`` are rescaled to sum to 1, so every row of S sums to 1.
    """
    total = float(sum(weights))
    n, k = neighbours[0].shape
    rows = np.repeat(np.arange(n, dtype=np.int64), k)
    parts = [
        sp.csr_matrix((np.full(n * k, w / total / k), (rows, nb.ravel())), shape=(n, n))
        for nb, w in zip(neighbours, weights, strict=True)
    ]
    graph = sp.csr_matrix(sum(parts[1:], parts[0]), dtype=np.float32)
    graph.sort_indices()
    return graph


def _load_features(path: str, n_expected: int | None) -> np.ndarray:
    """One modality as a float32 (n, d) array with the first file's row count, at least 2 items."""
    array = load_item_features(path, n_expected)
    if array.shape[0] < 2 or array.shape[1] < 1:
        raise StageError(f"{path}: expected at least 2 items and 1 dimension, got shape {array.shape}")
    return array


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="graph-item-knn", description="exact blocked cosine kNN item graph")
    parser.add_argument("--features", nargs="+", required=True, help="one (I, d) .npy per modality")
    parser.add_argument("--weights", nargs="+", type=float, required=True, help="one mixing weight per modality")
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--out", required=True, help="output .npz, scipy sparse (I, I) float32")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK, help="tile side; memory ~ 4*block^2 bytes")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--self-loop", default="include", choices=["include", "exclude"])
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log, "graph-item-knn")

    def body() -> None:
        if len(args.weights) != len(args.features):
            raise StageError(f"{len(args.features)} feature files but {len(args.weights)} weights")
        if not all(math.isfinite(w) and w >= 0 for w in args.weights) or sum(args.weights) <= 0:
            raise StageError(f"weights must be finite, >= 0 and with a positive sum, got {args.weights}")
        if args.k < 1 or args.block_size < 1:
            raise StageError(f"--k and --block-size must be positive, got {args.k} and {args.block_size}")
        device = resolve_device(args.device)
        neighbours: list[np.ndarray] = []
        used_weights: list[float] = []
        n_items: int | None = None
        for path, weight in zip(args.features, args.weights, strict=True):
            features = _load_features(path, n_items)
            n_items = features.shape[0]
            limit = n_items if args.self_loop == "include" else n_items - 1
            if args.k > limit:
                raise StageError(f"--k {args.k} exceeds the {limit} possible neighbours of {n_items} items ({path})")
            if weight == 0:
                logger.info("%s has weight 0: checked, not searched", path)
                continue
            started = time.monotonic()
            neighbours.append(neighbour_lists(features, args.k, args.self_loop, args.block_size, device, logger))
            used_weights.append(weight)
            del features
            logger.info("%s (weight %g): top-%d on %s in %.1f s", path, weight, args.k, device, time.monotonic() - started)
        graph = mixed_graph(neighbours, used_weights)
        save_sparse(args.out, graph)
        logger.info("wrote %s: shape %s, %d non-zeros, self-loop %s", args.out, graph.shape, graph.nnz, args.self_loop)

    return run_stage(body, logger)
