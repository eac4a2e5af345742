"""ingest on the real 2018 Magazine_Subscriptions sample in ../shared (both meta variants)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from vlif_pipeline.amazon import ingest
from vlif_pipeline.data import kcore


@pytest.mark.parametrize("meta_name", ["meta_Magazine_Subscriptions.json.gz",
                                       "meta_Magazine_Subscriptions.imageURL-variant.json.gz"])
def test_real_magazine_dump(shared_dir: Path, tmp_path: Path, meta_name: str) -> None:
    data = shared_dir / "data" / "amazon2018_magazine"
    out = tmp_path / "ingest"
    rc = ingest.main(
        ["--format", "amazon2018", "--reviews", str(data / "Magazine_Subscriptions_5.json.gz"),
         "--meta", str(data / meta_name), "--out-interactions", str(out / "interactions.parquet"),
         "--out-items", str(out / "items.parquet"), "--report", str(out / "report.json")]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["reviews"]["lines_read"] == 2375 and report["reviews"]["bad_lines"] == 0
    assert report["duplicates"]["dropped"] == 73
    assert (report["n_users"], report["n_items"], report["n_interactions"]) == (348, 157, 2375 - 73)
    assert report["items_without_meta"] == 6
    assert report["meta"]["duplicate_ids"] > 0 and report["meta"]["bad_lines"] == 0

    items = pl.read_parquet(out / "items.parquet")
    with_meta = items.filter(pl.col("has_meta"))
    assert with_meta.height == 151
    for column in ("title", "brand", "description", "categories"):
        assert not items.get_column(column).str.contains(r"[<>]|&amp;|&#").any(), column
    assert items.filter(pl.col("raw_title").str.starts_with("<span")).get_column("title").eq("").all()
    urls = with_meta.get_column("image_url").drop_nulls()
    assert urls.len() == items.height - report["items_without_image_url"]
    assert urls.str.starts_with("https://").all() and not urls.str.contains("_SX38_").any()

    rc = kcore.main(["--interactions", str(out / "interactions.parquet"), "--items", str(out / "items.parquet"),
                     "--k", "5", "--split", "random", "--seed", "42", "--missing-meta", "drop",
                     "--out-dir", str(tmp_path / "kcore")])
    assert rc == 0
    stats = json.loads((tmp_path / "kcore" / "stats.json").read_text())
    assert stats["n_items"] < 157 and stats["n_users"] < 348 and stats["splits"]["test"] > 0
