"""Stage ``ingest``: raw review + meta dumps -> interactions.parquet, items.parquet, a report.

Duplicate (user, item) reviews keep the earliest one (smallest timestamp; on a tie, the earlier
line), the first time the user met the item. Items are exactly the reviewed items, sorted by id;
meta records of unreviewed items are skipped, and reviewed items without meta are kept with
``has_meta = false`` and empty text (the k-core stage decides whether to drop them).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from vlif_pipeline.amazon.formats import FORMATS, ReleaseFormat
from vlif_pipeline.amazon.items import blank_row, items_frame
from vlif_pipeline.amazon.meta import check_layout, default_workers, read_meta
from vlif_pipeline.amazon.readers import read_reviews
from vlif_pipeline.io import atomic_path, run_stage, setup_logging, write_json
from vlif_pipeline.tables import DEDUP_RULE, TEXT_COLUMNS, drop_duplicate_pairs


def ingest(
    fmt: ReleaseFormat, reviews_path: Path, meta_path: Path, max_bad_fraction: float, workers: int,
    log: logging.Logger,
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Read, validate, deduplicate and clean; returns (interactions, items, report)."""
    reviews, review_stats = read_reviews(reviews_path, fmt)
    review_stats.check(max_bad_fraction)
    log.info(
        "reviews: %d records from %d lines (%d bad)", reviews.height, review_stats.lines_read, review_stats.bad_lines
    )
    interactions = drop_duplicate_pairs(reviews)
    item_ids = interactions.get_column("item_id").unique().sort().to_list()
    rows, meta_stats = read_meta(meta_path, fmt, set(item_ids), workers)
    meta_stats.check(max_bad_fraction)
    check_layout(meta_stats, fmt)
    items = items_frame([rows.get(item_id) or blank_row(item_id) for item_id in item_ids])
    report = {
        "format": fmt.name,
        "max_bad_fraction": max_bad_fraction,
        "reviews": asdict(review_stats),
        "meta": asdict(meta_stats),
        "duplicates": {"dropped": reviews.height - interactions.height, "rule": DEDUP_RULE},
        "n_interactions": interactions.height,
        "n_users": interactions.get_column("user_id").n_unique(),
        "n_items": items.height,
        "items_without_meta": int((~items.get_column("has_meta")).sum()),
        "items_without_title": int((items.get_column("title") == "").sum()),
        "items_without_image_url": int(items.get_column("image_url").is_null().sum()),
        "items_without_price": int(items.get_column("price").is_null().sum()),
        "values_changed_by_cleaning": {
            column: int(items.get_column(f"raw_{column}").is_not_null().sum())
            for column in (*TEXT_COLUMNS, "image_url")
        },
        "warnings": sparse_fields(items, fmt, meta_path),
    }
    for warning in report["warnings"]:
        log.warning("%s", warning)
    return interactions.drop("line"), items, report


EXPECTED_FIELDS = ("title", "image_url", "categories")  # every release has them for nearly every item


def sparse_fields(items: pl.DataFrame, fmt: ReleaseFormat, meta_path: Path) -> list[str]:
    """A warning for each field every release should fill that is empty for more than half of the
    items with meta: a sign of a format mismatch or a damaged dump, which would otherwise pass."""
    with_meta = items.filter(pl.col("has_meta"))
    warnings = []
    for column in EXPECTED_FIELDS if with_meta.height else ():
        values = with_meta.get_column(column)
        empty = int((values.is_null() | (values.cast(pl.String).str.strip_chars() == "")).sum())
        if empty > with_meta.height / 2:
            warnings.append(
                f"{meta_path}: {column} is empty for {empty} of {with_meta.height} items with meta "
                f"({empty / with_meta.height:.0%}); is the dump in the {fmt.name} layout?"
            )
    return warnings


def summary(report: dict[str, Any]) -> str:
    """The few numbers a person wants to see in the log."""
    rev, meta = report["reviews"], report["meta"]
    return (
        f"{report['n_interactions']} interactions, {report['n_users']} users, {report['n_items']} items; "
        f"reviews: {rev['lines_read']} lines, {rev['bad_lines']} bad; "
        f"{report['duplicates']['dropped']} duplicate (user, item) pairs dropped; "
        f"meta: {meta['records_parsed']} records parsed, {meta['bad_lines']} bad, "
        f"{meta['skipped_unreviewed']} for unreviewed items skipped, {meta['duplicate_ids']} duplicate ids; "
        f"reviewed items without meta {report['items_without_meta']}, without title "
        f"{report['items_without_title']}, without image URL {report['items_without_image_url']}"
    )


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be within [0, 1], got {text}")
    return value


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="ingest", description=__doc__)
    parser.add_argument("--format", required=True, choices=sorted(FORMATS))
    parser.add_argument("--reviews", required=True, type=Path)
    parser.add_argument("--meta", required=True, type=Path)
    parser.add_argument("--out-interactions", required=True, type=Path)
    parser.add_argument("--out-items", required=True, type=Path)
    parser.add_argument("--report", required=True, type=Path)
    parser.add_argument("--max-bad-fraction", type=_fraction, default=0.01)
    parser.add_argument("--workers", type=int, default=default_workers(),
                        help="processes that parse large meta files (default: usable CPUs, at most 4)")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    log = setup_logging(args.log, "ingest")

    def body() -> None:
        interactions, items, report = ingest(
            FORMATS[args.format], args.reviews, args.meta, args.max_bad_fraction, args.workers, log
        )
        with atomic_path(args.out_interactions) as tmp:
            interactions.write_parquet(tmp)
        with atomic_path(args.out_items) as tmp:
            items.write_parquet(tmp)
        write_json(args.report, report)
        log.info("ingest: %s", summary(report))

    return run_stage(body, log)
