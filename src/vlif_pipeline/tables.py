"""What the raw-data stages (``amazon/``) and the dataset stages (``data/``) share: the items
table's columns, and the one rule for duplicate interactions, which ingest reports and kcore
re-applies. Kept here, beside neither, so that neither package imports the other.
"""

from __future__ import annotations

import polars as pl

TEXT_COLUMNS = ("title", "brand", "description", "categories")
ITEM_SCHEMA: dict[str, pl.DataType | type[pl.DataType]] = {
    "item_id": pl.String,
    "title": pl.String,
    "brand": pl.String,
    "description": pl.String,
    "categories": pl.String,
    "image_url": pl.String,
    "price": pl.Float64,
    "has_meta": pl.Boolean,
    "raw_title": pl.String,
    "raw_brand": pl.String,
    "raw_description": pl.String,
    "raw_categories": pl.String,
    "raw_image_url": pl.String,
}

DEDUP_RULE = "keep the earliest interaction of each (user, item): smallest timestamp, then earliest line"


def drop_duplicate_pairs(interactions: pl.DataFrame) -> pl.DataFrame:
    """Apply ``DEDUP_RULE`` (rows are in file order); the survivors keep their order.

    Only rows whose (user, item) hash repeats can be duplicates; the exact rule runs on those few.
    """
    pair = pl.struct("user_id", "item_id")
    indexed = interactions.with_row_index("_row")
    candidates = indexed.filter(pair.hash().is_duplicated())
    if candidates.height == 0:
        return interactions
    losers = candidates.sort("timestamp", "_row").filter(~pair.is_first_distinct()).get_column("_row")
    return indexed.filter(~pl.col("_row").is_in(losers.implode())).drop("_row")
