"""Stage ``kcore``: deduplicate, filter to the k-core, remap ids, split per user.

Order of operations (documented in docs/data.md):
1. with ``--missing-meta drop``, interactions on items without meta are removed;
2. duplicate (user, item) pairs keep the earliest interaction (``vlif_pipeline.tables``);
3. users and items with fewer than k interactions are removed, repeatedly, until none is left;
4. ids are remapped to 0..n-1 in sorted order of the original id strings (byte-wise), so the same
   input always gives the same ids;
5. each user's interactions are split (``split.random_split`` or ``split.loo_split``).

An MMRec-layout folder writes the same files through ``mmrec-import`` (``vlif_pipeline.data.mmrec``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from vlif_pipeline.data.split import loo_split, random_split, split_stats
from vlif_pipeline.io import StageError, atomic_path, require_columns, run_stage, setup_logging, write_json
from vlif_pipeline.tables import drop_duplicate_pairs

INTERACTION_COLUMNS = ("user_id", "item_id", "rating", "timestamp")


def kcore_mask(u: np.ndarray, i: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Boolean mask of interactions in the k-core of the bipartite graph, and the rounds it took.

    Each round works on the survivors of the previous one only, so late rounds cost little.
    """
    n_users, n_items = int(u.max(initial=-1)) + 1, int(i.max(initial=-1)) + 1
    keep = np.zeros(u.size, dtype=bool)
    alive = np.arange(u.size)
    rounds = 0
    while True:
        rounds += 1
        user_deg = np.bincount(u, minlength=n_users)
        item_deg = np.bincount(i, minlength=n_items)
        ok = (user_deg[u] >= k) & (item_deg[i] >= k)
        if ok.all():
            break
        alive, u, i = alive[ok], u[ok], i[ok]
    keep[alive] = True
    return keep, rounds


def _compact(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber the codes in use to 0..n-1 keeping their order; returns (new codes, kept old codes)."""
    used = np.zeros(size, dtype=bool)
    used[codes] = True
    new_of_old = np.cumsum(used) - 1
    return new_of_old[codes], np.flatnonzero(used)


def read_table(path: Path, required: tuple[str, ...]) -> pl.DataFrame:
    if not path.is_file():
        raise StageError(f"{path}: no such file")
    try:
        table = pl.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any reader complaint means the file is not usable
        raise StageError(f"{path}: not a readable Parquet file ({err})") from None
    require_columns(path, table.columns, required)
    return table


def build_kcore(
    interactions: pl.DataFrame,
    items: pl.DataFrame,
    k: int,
    split: str,
    seed: int,
    missing_meta: str,
    ratios: tuple[float, float, float],
    log: logging.Logger,
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """The whole stage on in-memory tables: (interactions, users, items, stats)."""
    stats: dict[str, Any] = {"k": k, "split_method": split, "seed": seed, "missing_meta": missing_meta}
    if split == "random":
        stats["ratios"] = list(ratios)
    stats["input_interactions"] = interactions.height
    reviewed = interactions.get_column("item_id").unique()
    unknown = reviewed.filter(~reviewed.is_in(items.get_column("item_id").implode())).sort()
    if unknown.len():
        examples = ", ".join(unknown.head(5).to_list())
        raise StageError(f"interactions name {unknown.len()} item(s) absent from the items table, e.g. {examples}")
    if missing_meta == "drop":
        without = items.filter(~pl.col("has_meta")).get_column("item_id")
        before = interactions.height
        interactions = interactions.filter(~pl.col("item_id").is_in(without.implode()))
        stats["dropped_for_missing_meta"] = {"items": without.len(), "interactions": before - interactions.height}

    user_names = interactions.get_column("user_id").unique().sort()
    item_names = interactions.get_column("item_id").unique().sort()
    deduped = drop_duplicate_pairs(interactions.select(INTERACTION_COLUMNS))
    stats["duplicates_dropped"] = interactions.height - deduped.height
    user_codes = pl.DataFrame({"user_id": user_names, "_u": np.arange(user_names.len())})
    item_codes = pl.DataFrame({"item_id": item_names, "_i": np.arange(item_names.len())})
    coded = deduped.join(user_codes, on="user_id", maintain_order="left").join(
        item_codes, on="item_id", maintain_order="left"
    )

    u_code = coded.get_column("_u").to_numpy()
    i_code = coded.get_column("_i").to_numpy()
    keep, rounds = kcore_mask(u_code, i_code, k)
    stats["kcore_rounds"] = rounds
    log.info("k-core (k=%d): kept %d of %d interactions after %d rounds", k, int(keep.sum()), keep.size, rounds)
    if not keep.any():
        raise StageError(f"the {k}-core is empty: no user and item both have {k} or more interactions")

    u, kept_users = _compact(u_code[keep], user_names.len())
    i, kept_items = _compact(i_code[keep], item_names.len())
    kept = coded.filter(pl.Series(keep))
    timestamp = kept.get_column("timestamp").to_numpy()
    labels = random_split(u, i, timestamp, seed, ratios) if split == "random" else loo_split(u, i, timestamp)

    out = pl.DataFrame(
        {
            "u": u,
            "i": i,
            "rating": kept.get_column("rating").cast(pl.Float32),
            "timestamp": timestamp,
            "split": labels,
        }
    ).sort("u", "timestamp", "i")
    users = pl.DataFrame({"u": np.arange(kept_users.size), "user_id": user_names.gather(kept_users)})
    item_index = pl.DataFrame({"i": np.arange(kept_items.size), "item_id": item_names.gather(kept_items)})
    items_out = item_index.join(items, on="item_id", how="left", maintain_order="left")
    stats.update(split_stats(out, users.height, items_out.height))
    return out, users, items_out, stats


def write_kcore(
    out_dir: Path, interactions: pl.DataFrame, users: pl.DataFrame, items: pl.DataFrame, stats: dict[str, Any]
) -> None:
    """The kcore layout of docs/stages.md, each file written atomically."""
    schemas = {"u": pl.Int64, "i": pl.Int64, "timestamp": pl.Int64, "split": pl.Int8, "rating": pl.Float32}
    interactions = interactions.with_columns(pl.col(c).cast(t) for c, t in schemas.items())
    for name, table in (("interactions", interactions), ("users", users), ("items", items)):
        cast = [pl.col(c).cast(pl.Int64) for c in ("u", "i") if c in table.columns]
        with atomic_path(out_dir / f"{name}.parquet") as tmp:
            table.with_columns(cast).write_parquet(tmp)
    write_json(out_dir / "stats.json", stats)


def _ratios(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(p) for p in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected three numbers like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1.0) > 1e-6:
        raise argparse.ArgumentTypeError(f"expected three non-negative ratios summing to 1, got {text!r}")
    return parts  # type: ignore[return-value]


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="kcore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--interactions", required=True, type=Path)
    parser.add_argument("--items", required=True, type=Path)
    parser.add_argument("--k", type=_positive, default=5)
    parser.add_argument("--split", choices=["random", "loo"], default="random")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--missing-meta", choices=["keep", "drop"], default="keep")
    parser.add_argument("--ratios", type=_ratios, default=(0.8, 0.1, 0.1),
                        help="train,valid,test for users with 10+ interactions (random split only)")
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    log = setup_logging(args.log, "kcore")

    def body() -> None:
        interactions = read_table(args.interactions, INTERACTION_COLUMNS)
        items = read_table(args.items, ("item_id", "has_meta"))
        tables = build_kcore(interactions, items, args.k, args.split, args.seed, args.missing_meta, args.ratios, log)
        write_kcore(args.out_dir, *tables)
        stats = tables[3]
        log.info(
            "kcore: %d users, %d items, %d interactions (density %.5f), splits %s",
            stats["n_users"], stats["n_items"], stats["n_interactions"], stats["density"], stats["splits"],
        )

    return run_stage(body, log)
