"""The one duplicate rule, shared by ingest (which reports it) and kcore (which re-applies it)."""

from __future__ import annotations

import polars as pl

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
