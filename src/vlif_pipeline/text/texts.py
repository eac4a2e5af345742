"""The text each item is encoded from: catalogue text, or a caption (optionally after the title).

Kept apart from the encoder so the exact strings are testable without loading a model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from vlif_pipeline.io import StageError

ITEM_FIELDS = ("title", "brand", "categories", "description")


def _read(path: str | Path, columns: list[str]) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except FileNotFoundError as err:
        raise StageError(f"{path}: file not found") from err
    except (pl.exceptions.PolarsError, OSError) as err:
        raise StageError(f"{path}: cannot read as parquet ({err})") from err
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame.select(columns)


def _check_item_ids(path: str | Path, ids: np.ndarray, n_items: int) -> None:
    """Ids must be exactly 0..n_items-1, each once, so that row i of the output is item i."""
    if ids.size and ((ids < 0) | (ids >= n_items)).any():
        bad = int(np.flatnonzero((ids < 0) | (ids >= n_items))[0])
        raise StageError(f"{path}: row {bad}: i={int(ids[bad])} outside 0..{n_items - 1}")
    counts = np.bincount(ids, minlength=n_items)
    if (counts > 1).any():
        raise StageError(f"{path}: item i={int(np.flatnonzero(counts > 1)[0])} appears {int(counts.max())} times")
    if (counts == 0).any():
        missing = np.flatnonzero(counts == 0)
        raise StageError(f"{path}: item i={int(missing[0])} has no row ({missing.size} items missing)")


def _column(frame: pl.DataFrame, name: str) -> list[str]:
    """A string column with nulls as "" and surrounding whitespace stripped."""
    return [s.strip() for s in frame.get_column(name).cast(pl.String).fill_null("").to_list()]


def _by_item(path: str | Path, columns: list[str], n_items: int | None = None) -> pl.DataFrame:
    """Read ``i`` + ``columns``, check the ids are 0..n-1 each once, and sort by ``i``."""
    frame = _read(path, ["i", *columns])
    if frame.get_column("i").null_count():
        raise StageError(f"{path}: column 'i' has nulls")
    ids = frame.get_column("i").to_numpy().astype(np.int64)
    _check_item_ids(path, ids, len(ids) if n_items is None else n_items)
    return frame.sort("i")


def item_texts(items_path: str | Path) -> list[str]:
    """Catalogue text of every item, in item order: title, brand, categories, description.

    Non-empty fields joined by a space (the MMRec recipe the paper follows); an item without any
    text gets "" and still its row.
    """
    frame = _by_item(items_path, list(ITEM_FIELDS))
    fields = [_column(frame, name) for name in ITEM_FIELDS]
    return [" ".join(part for part in parts if part) for parts in zip(*fields, strict=True)]


USABLE_STATUSES = ("ok", "text_only")  # the caption stage's statuses whose caption describes the item


def caption_texts(
    items_path: str | Path, captions_path: str | Path, prepend_title: bool
) -> tuple[list[str], int]:
    """Caption text of every item, in item order, and how many items had no usable caption.

    ``"{title}. {caption}"`` with ``prepend_title`` (the paper's code), else the caption alone.
    Usable captions have status ``ok`` (from the image) or ``text_only`` (no usable image: the
    model described the product from its title, as ``--no-image-policy text_only`` asks); any other
    item (``empty``, ``image_error``, ``failed``, or an empty caption) falls back to its title (or "").
    """
    titles = _column(_by_item(items_path, ["title"]), "title")
    frame = _by_item(captions_path, ["caption", "status"], n_items=len(titles))
    captions = _column(frame, "caption")
    status = frame.get_column("status").cast(pl.String).fill_null("").to_list()
    texts: list[str] = []
    failed = 0
    for title, caption, state in zip(titles, captions, status, strict=True):
        if state not in USABLE_STATUSES or not caption:
            failed += 1
            texts.append(title if prepend_title else "")
        elif prepend_title and title:
            texts.append(f"{title}. {caption}")
        else:
            texts.append(caption)
    return texts, failed
