"""MMRec interop: export a kcore dataset to MMRec's folder layout, and import such a folder.

MMRec layout (REFERENCE section 2): ``<name>.inter`` (tab-separated, header
``userID itemID rating timestamp x_label``, x_label 0/1/2 = train/valid/test),
``i_id_mapping.csv`` (``asin<TAB>itemID``), ``u_id_mapping.csv`` (``user_id<TAB>userID``) and the
optional ``text_feat.npy`` / ``image_feat.npy`` with row i = item i.

Import (stage ``mmrec-import``) keeps MMRec's ids and split as they are (the widely shared
Baby/Sports/Clothing folders are then evaluated on exactly their published split) and writes the
k-core stage's files, so every later stage treats the folder like a dataset built from raw dumps.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from vlif_pipeline.amazon.formats import FORMATS, ReleaseFormat
from vlif_pipeline.amazon.ingest import sparse_fields
from vlif_pipeline.amazon.items import blank_row, items_frame
from vlif_pipeline.amazon.meta import check_layout, read_meta
from vlif_pipeline.amazon.readers import FileStats
from vlif_pipeline.data.kcore import read_table, write_kcore
from vlif_pipeline.data.split import split_stats
from vlif_pipeline.io import (
    StageError,
    atomic_path,
    load_item_features,
    require_columns,
    run_stage,
    save_npy,
    setup_logging,
    write_json,
)
from vlif_pipeline.tables import ITEM_SCHEMA, TEXT_COLUMNS

INTER_COLUMNS = ("userID", "itemID", "rating", "timestamp", "x_label")


def _write_tsv(path: Path, table: pl.DataFrame) -> None:
    with atomic_path(path) as tmp:
        table.write_csv(tmp, separator="\t")


def _copy_features(source: Path, target: Path, n_items: int) -> None:
    save_npy(target, load_item_features(source, n_items))


def export_mmrec(kcore_dir: Path, name: str, out_dir: Path, text_feat: Path | None, image_feat: Path | None) -> None:
    """Write ``out_dir`` in MMRec's layout from a kcore folder (and feature files, if given)."""
    interactions = pl.read_parquet(kcore_dir / "interactions.parquet")
    users = pl.read_parquet(kcore_dir / "users.parquet")
    items = pl.read_parquet(kcore_dir / "items.parquet")
    _write_tsv(
        out_dir / f"{name}.inter",
        interactions.select(
            pl.col("u").alias("userID"), pl.col("i").alias("itemID"), "rating", "timestamp",
            pl.col("split").alias("x_label"),
        ),
    )
    _write_tsv(out_dir / "i_id_mapping.csv", items.select(pl.col("item_id").alias("asin"), pl.col("i").alias("itemID")))
    _write_tsv(out_dir / "u_id_mapping.csv", users.select("user_id", pl.col("u").alias("userID")))
    for source, target in ((text_feat, "text_feat.npy"), (image_feat, "image_feat.npy")):
        if source is not None:
            _copy_features(source, out_dir / target, items.height)


def _read_tsv(path: Path, required: tuple[str, ...], strings: tuple[str, ...] = ()) -> pl.DataFrame:
    """A tab-separated file with the ``required`` columns; ``strings`` are read as text, not inferred
    (an all-digit id such as the ASIN 0000013714 would lose its leading zeros as a number)."""
    try:
        overrides = dict.fromkeys(strings, pl.String)
        table = pl.read_csv(path, separator="\t", infer_schema_length=10000, schema_overrides=overrides)
    except Exception as err:  # noqa: BLE001 - any parser complaint means the file is not usable
        raise StageError(f"{path}: not a readable tab-separated file ({err})") from None
    require_columns(path, table.columns, required)
    return table


def _mapping(path: Path, id_col: str, new_col: str, n: int) -> pl.Series:
    """Original ids in new-id order; ``str(new id)`` where the mapping file is absent."""
    if not path.is_file():
        return pl.Series(id_col, [str(k) for k in range(n)], dtype=pl.String)
    table = _read_tsv(path, (id_col, new_col), strings=(id_col,))
    ids = table.get_column(new_col)
    if ids.sort().to_list() != list(range(n)):
        raise StageError(f"{path}: {new_col} must be exactly 0..{n - 1}, one row each")
    return table.sort(new_col).get_column(id_col)


def import_mmrec(
    inter_path: Path, items_for: Callable[[list[str]], pl.DataFrame] | None = None
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, dict[str, Any]]:
    """Read an MMRec dataset, ``<name>.inter`` and the id mappings beside it, into the kcore tables
    (interactions, users, items, stats).

    ``items_for(asins)`` gives the items table (ingest's columns) to join on asin, for the asins in
    itemID order: from a raw meta dump (``items_from_meta``) or an ingested table. Without it, items
    have empty text and ``has_meta = false``.
    """
    if not inter_path.is_file():
        raise StageError(f"{inter_path}: no such file")
    folder = inter_path.parent
    raw = _read_tsv(inter_path, ("userID", "itemID", "x_label"))
    for column in ("userID", "itemID", "x_label"):
        if not raw.schema[column].is_integer() or raw.get_column(column).null_count():
            raise StageError(f"{inter_path}: column {column} must hold integers only")
    labels = raw.get_column("x_label")
    if not labels.is_in([0, 1, 2]).all():
        bad = raw.with_row_index("row").filter(~pl.col("x_label").is_in([0, 1, 2])).row(0, named=True)
        raise StageError(f"{inter_path}: data row {bad['row'] + 1} has x_label {bad['x_label']} (0, 1 or 2 expected)")
    if min(raw.get_column("userID").min(), raw.get_column("itemID").min()) < 0:  # type: ignore[type-var]
        raise StageError(f"{inter_path}: negative userID or itemID")
    interactions = raw.select(
        pl.col("userID").cast(pl.Int64).alias("u"),
        pl.col("itemID").cast(pl.Int64).alias("i"),
        (pl.col("rating") if "rating" in raw.columns else pl.lit(1.0)).cast(pl.Float32).alias("rating"),
        (pl.col("timestamp") if "timestamp" in raw.columns else pl.lit(0)).cast(pl.Int64).alias("timestamp"),
        pl.col("x_label").cast(pl.Int8).alias("split"),
    ).sort("u", "timestamp", "i")
    i_map = folder / "i_id_mapping.csv"
    u_map = folder / "u_id_mapping.csv"
    n_items = max(int(interactions.get_column("i").max()) + 1, _rows(i_map))  # type: ignore[arg-type]
    n_users = max(int(interactions.get_column("u").max()) + 1, _rows(u_map))  # type: ignore[arg-type]
    users = pl.DataFrame({"u": np.arange(n_users), "user_id": _mapping(u_map, "user_id", "userID", n_users)})
    item_ids = _mapping(i_map, "asin", "itemID", n_items).alias("item_id")
    index = pl.DataFrame({"i": np.arange(n_items), "item_id": item_ids})
    if items_for is not None:
        items = index.join(items_for(item_ids.to_list()), on="item_id", how="left", maintain_order="left")
    else:
        blank = {
            c: pl.lit("" if c in TEXT_COLUMNS else None, dtype=t) for c, t in ITEM_SCHEMA.items() if c != "item_id"
        }
        items = index.with_columns(**blank).with_columns(pl.lit(False).alias("has_meta"))
    stats = {"source": f"mmrec:{inter_path}", **split_stats(interactions, n_users, n_items)}
    return interactions, users, items, stats


def _rows(path: Path) -> int:
    if not path.is_file():
        return 0
    with open(path, "rb") as fh:
        return max(sum(1 for line in fh if line.strip()) - 1, 0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="mmrec-export", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kcore-dir", required=True, type=Path)
    parser.add_argument("--text-feat", type=Path)
    parser.add_argument("--image-feat", type=Path)
    parser.add_argument("--name", required=True)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    log = setup_logging(args.log, "mmrec-export")

    def body() -> None:
        for needed in ("interactions.parquet", "users.parquet", "items.parquet"):
            if not (args.kcore_dir / needed).is_file():
                raise StageError(f"{args.kcore_dir / needed}: no such file (not a kcore folder?)")
        export_mmrec(args.kcore_dir, args.name, args.out_dir, args.text_feat, args.image_feat)
        log.info("wrote MMRec layout for %s to %s", args.name, args.out_dir)

    return run_stage(body, log)


class MetaItems:
    """``items_for`` from a raw meta dump: the cleaned item rows of the asins asked for, as ingest
    makes them (layout checked, bad lines counted); ``stats`` and ``warnings`` for the report."""

    def __init__(self, path: Path, fmt: ReleaseFormat, max_bad_fraction: float, workers: int) -> None:
        self.path, self.fmt, self.max_bad_fraction, self.workers = path, fmt, max_bad_fraction, workers
        self.stats: FileStats | None = None
        self.warnings: list[str] = []

    def __call__(self, asins: list[str]) -> pl.DataFrame:
        rows, self.stats = read_meta(self.path, self.fmt, set(asins), self.workers)
        self.stats.check(self.max_bad_fraction)
        check_layout(self.stats, self.fmt)
        items = items_frame([rows.get(asin) or blank_row(asin) for asin in asins])
        self.warnings = sparse_fields(items, self.fmt, self.path)
        return items


def import_report(inter: Path, stats: dict[str, Any], items: pl.DataFrame, meta: MetaItems | None) -> dict[str, Any]:
    """What the import saw: sizes, and how many items lack meta, a title or an image URL."""
    report: dict[str, Any] = {
        "format": "mmrec",
        "source": str(inter),
        "n_users": stats["n_users"],
        "n_items": stats["n_items"],
        "n_interactions": stats["n_interactions"],
        "items_without_meta": int((~items.get_column("has_meta").fill_null(False)).sum()),
    }
    for column in ("title", "image_url"):
        if column in items.columns:  # an ingested table given with --items may lack some
            values = items.get_column(column)
            report[f"items_without_{column}"] = int((values.is_null() | (values == "")).sum())
    if meta is not None and meta.stats is not None:
        report.update(meta_format=meta.fmt.name, meta=asdict(meta.stats), warnings=meta.warnings)
    return report


def import_main(argv: list[str]) -> int:
    """`mmrec-import`: an MMRec dataset becomes the k-core stage's files, with its own ids and split."""
    parser = argparse.ArgumentParser(prog="mmrec-import", description=import_main.__doc__)
    parser.add_argument("--inter", required=True, type=Path, help="<name>.inter; the id mappings are read beside it")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--meta", type=Path, help="a raw meta dump whose records are joined on asin")
    source.add_argument("--items", type=Path, help="an ingested items table to join on asin")
    parser.add_argument("--meta-format", choices=sorted(FORMATS), default="amazon2014", help="the meta dump's release")
    parser.add_argument("--max-bad-fraction", type=float, default=0.01, help="of the meta dump's lines")
    parser.add_argument("--out-dir", required=True, type=Path, help="the k-core folder to write")
    parser.add_argument("--report", type=Path, help="where to write the import's report (JSON)")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    log = setup_logging(args.log, "mmrec-import")

    def body() -> None:
        meta = MetaItems(args.meta, FORMATS[args.meta_format], args.max_bad_fraction, 1) if args.meta else None
        items_for = meta
        if args.items:
            table = read_table(args.items, ("item_id",))
            items_for = lambda _asins: table  # noqa: E731 - an ingested table serves every asin
        tables = import_mmrec(args.inter, items_for)
        write_kcore(args.out_dir, *tables)
        stats, item_table = tables[3], tables[2]
        report = import_report(args.inter, stats, item_table, meta)
        for warning in report.get("warnings", []):
            log.warning("%s", warning)
        if args.report:
            write_json(args.report, report)
        log.info("%s: %d users, %d items, %d interactions, splits %s (MMRec's own ids and split)",
                 args.inter, stats["n_users"], stats["n_items"], stats["n_interactions"], stats["splits"])

    return run_stage(body, log)


def features_main(argv: list[str]) -> int:
    """`mmrec-features`: an MMRec folder's feature file becomes a pipeline feature file.

    MMRec rows are already in itemID order, which `mmrec-import` keeps as `i`, so this is
    a checked copy (row count against `stats.json`, float32), not a re-encoding.
    """
    parser = argparse.ArgumentParser(prog="mmrec-features", description=features_main.__doc__)
    parser.add_argument("--source", required=True, type=Path, help="text_feat.npy or image_feat.npy")
    parser.add_argument("--stats", required=True, type=Path, help="kcore/stats.json (n_items)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    log = setup_logging(args.log, "mmrec-features")

    def body() -> None:
        try:
            n_items = int(json.loads(args.stats.read_text())["n_items"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StageError(f"{args.stats}: cannot read n_items ({type(err).__name__}: {err})") from None
        _copy_features(args.source, args.out, n_items)
        log.info("copied %s -> %s (%d items)", args.source, args.out, n_items)

    return run_stage(body, log)
