"""One meta record -> one row of items.parquet: the item columns and how each is cleaned.

Lists are joined (categories with ", " and repeats dropped, the rest with " "); every part is
cleaned by ``text_clean.clean_text``.

Kept apart from the readers so that worker processes can build rows next to the parsing (the
costly part of a multi-million-line meta dump) and send back only the cleaned values.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from vlif_pipeline.amazon.formats import ReleaseFormat, full_size_image_url
from vlif_pipeline.amazon.text_clean import clean_join, raw_repr
from vlif_pipeline.tables import ITEM_SCHEMA, TEXT_COLUMNS

Row = tuple[Any, ...]  # values in ITEM_SCHEMA order


def item_row(item_id: str, rec: dict[str, Any], fmt: ReleaseFormat) -> Row:
    """The cleaned row of an item with meta; ``raw_<col>`` holds the raw value where cleaning changed it."""
    raw = fmt.to_item(rec)
    values: dict[str, Any] = {"item_id": item_id, "has_meta": True, "price": raw.price}
    for column in TEXT_COLUMNS:
        value = getattr(raw, column)
        if column == "categories":
            text, changed = clean_join(value, ", ", unique=True)
        else:
            text, changed = clean_join(value, " ")
        values[column] = text
        values[f"raw_{column}"] = raw_repr(value) if changed else None
    url = raw.image_url
    full = full_size_image_url(url) if url else None
    values["image_url"] = full
    values["raw_image_url"] = url if url != full else None
    return tuple(values[name] for name in ITEM_SCHEMA)


def blank_row(item_id: str) -> Row:
    """The row of a reviewed item without meta: empty text, no URL or price."""
    values = {name: None for name in ITEM_SCHEMA}
    values.update({column: "" for column in TEXT_COLUMNS}, item_id=item_id, has_meta=False)
    return tuple(values[name] for name in ITEM_SCHEMA)


def items_frame(rows: list[Row]) -> pl.DataFrame:
    """Rows (ITEM_SCHEMA order) to a typed frame."""
    return pl.DataFrame(rows, schema=ITEM_SCHEMA, orient="row")
