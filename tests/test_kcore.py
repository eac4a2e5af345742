"""kcore stage: iterative filtering, id order, duplicates, missing meta, the written layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from vlif_pipeline.data import kcore
from vlif_pipeline.tables import drop_duplicate_pairs


def _naive_kcore(pairs: set[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    """Reference: remove one under-degree node at a time until none is left."""
    pairs = set(pairs)
    while True:
        users: dict[int, int] = {}
        items: dict[int, int] = {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        bad = next(((u, i) for u, i in pairs if users[u] < k or items[i] < k), None)
        if bad is None:
            return pairs
        pairs = {(u, i) for u, i in pairs if users[u] >= k and items[i] >= k}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcore_mask_matches_naive(seed: int) -> None:
    rng = np.random.default_rng(seed)
    pairs = {(int(u), int(i)) for u, i in zip(rng.zipf(1.6, 3000) % 200, rng.zipf(1.4, 3000) % 150)}
    u, i = (np.array(x) for x in zip(*sorted(pairs)))
    keep, rounds = kcore.kcore_mask(u, i, 5)
    assert set(zip(u[keep].tolist(), i[keep].tolist())) == _naive_kcore(pairs, 5)
    assert rounds >= 2


def test_kcore_cascade() -> None:
    # user 2 has one interaction; once it goes, item 2 has one too and goes: a cascade.
    u = np.array([0, 0, 1, 1, 1, 2])
    i = np.array([0, 1, 0, 1, 2, 2])
    keep, _ = kcore.kcore_mask(u, i, 2)
    assert keep.tolist() == [True, True, True, True, False, False]


Rows = list[tuple[str, str, float, int]]
SCHEMA = {"user_id": pl.String, "item_id": pl.String, "rating": pl.Float32, "timestamp": pl.Int64}


def _tables(rows: Rows, no_meta: frozenset[str] = frozenset()) -> tuple[pl.DataFrame, pl.DataFrame]:
    inter = pl.DataFrame(rows, schema=SCHEMA, orient="row")
    ids = sorted(inter.get_column("item_id").unique().to_list())
    items = pl.DataFrame({"item_id": ids, "title": [f"t{x}" for x in ids], "has_meta": [x not in no_meta for x in ids]})
    return inter, items


def _run(tmp_path: Path, inter: pl.DataFrame, items: pl.DataFrame, *args: str) -> int:
    inter.write_parquet(tmp_path / "interactions.parquet")
    items.write_parquet(tmp_path / "items.parquet")
    return kcore.main(
        ["--interactions", str(tmp_path / "interactions.parquet"), "--items", str(tmp_path / "items.parquet"),
         "--out-dir", str(tmp_path / "kcore"), "--log", str(tmp_path / "log.txt"), *args]
    )


def _grid(n_users: int, n_items: int, skip: int = 0) -> list[tuple[str, str, float, int]]:
    return [(f"user{u:03d}", f"item{j:03d}", 5.0, 1000 + u * 100 + j)
            for u in range(n_users) for j in range(n_items) if (u + j) % 7 != skip or skip < 0]


def test_cli_writes_contract_layout(tmp_path: Path) -> None:
    rows = _grid(30, 12, skip=-1) + [("zz_lonely", "item000", 1.0, 5), ("user000", "rare_item", 2.0, 7)]
    inter, items = _tables(rows)
    assert _run(tmp_path, inter, items, "--k", "5", "--split", "random", "--seed", "3", "--missing-meta", "keep") == 0
    out = tmp_path / "kcore"
    got = pl.read_parquet(out / "interactions.parquet")
    assert got.schema == {"u": pl.Int64, "i": pl.Int64, "rating": pl.Float32, "timestamp": pl.Int64, "split": pl.Int8}
    users = pl.read_parquet(out / "users.parquet")
    items_out = pl.read_parquet(out / "items.parquet")
    assert users.get_column("u").to_list() == list(range(30))
    assert users.get_column("user_id").to_list() == sorted(f"user{u:03d}" for u in range(30))
    assert items_out.get_column("item_id").to_list() == [f"item{j:03d}" for j in range(12)]
    assert items_out.columns == ["i", "item_id", "title", "has_meta"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["n_users"] == 30 and stats["n_items"] == 12 and stats["n_interactions"] == 360
    assert stats["splits"] == {"train": 300, "valid": 30, "test": 30}
    assert stats["density"] == pytest.approx(1.0)
    # every user keeps its own per-user counts (12 interactions -> 10/1/1)
    per_user = got.group_by("u").agg((pl.col("split") == 0).sum().alias("train"))
    assert set(per_user.get_column("train").to_list()) == {10}


def test_same_input_same_output_and_seed_matters(tmp_path: Path) -> None:
    inter, items = _tables(_grid(40, 15, skip=3))
    outs = []
    for shuffle, (name, seed) in enumerate((("a", "1"), ("b", "1"), ("c", "2"))):
        (tmp_path / name).mkdir()
        rows = inter.sample(fraction=1.0, shuffle=True, seed=shuffle)  # row order must not matter
        assert _run(tmp_path / name, rows, items, "--seed", seed) == 0
        outs.append(pl.read_parquet(tmp_path / name / "kcore" / "interactions.parquet"))
    assert outs[0].equals(outs[1])
    assert not outs[0].equals(outs[2])


def test_duplicates_and_missing_meta_drop(tmp_path: Path) -> None:
    rows = _grid(20, 8, skip=-1) + [("user000", "item000", 1.0, 1)]  # an earlier duplicate of (user000, item000)
    inter, items = _tables(rows, no_meta=frozenset({"item007"}))
    assert _run(tmp_path, inter, items, "--missing-meta", "drop") == 0
    stats = json.loads((tmp_path / "kcore" / "stats.json").read_text())
    assert stats["duplicates_dropped"] == 1
    assert stats["dropped_for_missing_meta"] == {"items": 1, "interactions": 20}
    assert stats["n_items"] == 7
    got = pl.read_parquet(tmp_path / "kcore" / "interactions.parquet")
    assert got.filter((pl.col("u") == 0) & (pl.col("i") == 0)).get_column("timestamp").to_list() == [1]


def test_loo_split_cli(tmp_path: Path) -> None:
    inter, items = _tables(_grid(10, 6, skip=-1))
    assert _run(tmp_path, inter, items, "--split", "loo") == 0
    got = pl.read_parquet(tmp_path / "kcore" / "interactions.parquet")
    latest = got.sort("timestamp").group_by("u").agg(pl.col("split").last())
    assert set(latest.get_column("split").to_list()) == {2}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda inter, items: (inter.drop("timestamp"), items), "missing column(s) timestamp"),
        (lambda inter, items: (inter, items.filter(pl.col("item_id") != "item001")), "absent from the items table"),
        (lambda inter, items: (inter.head(3), items), "5-core is empty"),
    ],
)
def test_bad_inputs_fail_clearly(tmp_path: Path, mutate, message: str) -> None:  # noqa: ANN001
    inter, items = mutate(*_tables(_grid(10, 6, skip=-1)))
    assert _run(tmp_path, inter, items) == 1
    assert message in (tmp_path / "log.txt").read_text()


def test_drop_duplicate_pairs_rule() -> None:
    inter = pl.DataFrame(
        {"user_id": ["a", "b", "a", "a", "b", "c"], "item_id": ["x", "x", "x", "y", "x", "x"],
         "rating": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0], "timestamp": [5, 9, 3, 1, 9, 2]}
    )
    out = drop_duplicate_pairs(inter)
    # (a, x): time 3 beats time 5; (b, x): a tie at time 9, the earlier row wins; file order kept.
    assert out.get_column("rating").to_list() == [2.0, 3.0, 4.0, 6.0]
    assert drop_duplicate_pairs(out).equals(out)
