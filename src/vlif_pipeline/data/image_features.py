"""Stream the 2014 release's CNN image features (``image_features_<Cat>.b``) into a per-item .npy.

Why a stream: the file for a large category is gigabytes, while only the k-core items' rows are kept.
The file is a plain sequence of records, each a 10-byte ASCII asin followed by 4096 little-endian
float32; it is read a chunk of whole records at a time, so memory is one chunk plus the output.

Policy: a record with a non-finite value is skipped and counted; the first usable record of an asin
wins (later ones are counted as duplicates); k-core items without a usable record get the mean vector
of the found items (as MMRec does) and are counted in the report.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vlif_pipeline.io import (
    StageError,
    read_parquet_columns,
    require_integer_column,
    run_stage,
    save_npy,
    setup_logging,
    write_json,
)

ASIN_BYTES = 10
FEATURE_DIM = 4096
REPORT_EXAMPLES = 10


@dataclass
class StreamReport:
    """What the stream saw; written as the stage's report JSON."""

    records_read: int = 0
    matched: int = 0
    duplicate_records: int = 0
    duplicate_examples: list[str] = field(default_factory=list)
    nonfinite_records: int = 0
    nonfinite_examples: list[str] = field(default_factory=list)
    missing: int = 0
    missing_examples: list[str] = field(default_factory=list)


def read_item_ids(items_path: Path) -> list[str]:
    """Item ids (asins) in item order ``i = 0..I-1`` from a k-core ``items.parquet``."""
    table = read_parquet_columns(items_path, ("i", "item_id"))
    idx = require_integer_column(items_path, table, "i")
    ids = table.column("item_id").to_pylist()
    if len(ids) == 0:
        raise StageError(f"{items_path}: no items")
    order = np.argsort(idx, kind="stable")
    if not np.array_equal(idx[order], np.arange(len(ids))):
        raise StageError(f"{items_path}: column i is not a permutation of 0..{len(ids) - 1}")
    result = [ids[k] for k in order]
    for i, item_id in enumerate(result):
        if not item_id:
            raise StageError(f"{items_path}: item i={i} has an empty or null item_id")
    return result


def stream_features(
    features_path: Path,
    item_ids: list[str],
    dim: int = FEATURE_DIM,
    chunk_records: int = 1024,
) -> tuple[np.ndarray, StreamReport]:
    """Return ``(features (I, dim) float32, report)`` for ``item_ids`` from a .b file, one chunk at a time."""
    record = ASIN_BYTES + 4 * dim
    row_of = {asin: i for i, asin in enumerate(item_ids)}
    out = np.zeros((len(item_ids), dim), dtype=np.float32)
    found = np.zeros(len(item_ids), dtype=bool)
    total = np.zeros(dim, dtype=np.float64)  # running sum of matched rows, for the mean fill
    seen: set[bytes] = set()
    report = StreamReport()
    record_dtype = np.dtype([("asin", f"S{ASIN_BYTES}"), ("values", "<f4", (dim,))])
    try:
        fh = open(features_path, "rb")
    except OSError as err:
        raise StageError(f"{features_path}: cannot open: {err}") from err
    with fh:
        offset = 0
        while True:
            buf = fh.read(record * chunk_records)
            if not buf:
                break
            whole = len(buf) // record
            if whole * record != len(buf):
                raise StageError(
                    f"{features_path}: truncated record at byte offset {offset + whole * record}: "
                    f"{len(buf) - whole * record} trailing bytes, a record is {record} bytes "
                    f"({ASIN_BYTES}-byte asin + {dim} float32)")
            chunk = np.frombuffer(buf, dtype=record_dtype, count=whole)
            finite = np.isfinite(chunk["values"]).all(axis=1)
            for k in range(whole):
                raw = chunk["asin"][k]
                try:
                    asin = raw.decode("ascii").strip()
                except UnicodeDecodeError as err:
                    raise StageError(
                        f"{features_path}: record {report.records_read} at byte offset {offset + k * record}: "
                        f"asin {raw!r} is not ASCII (file misaligned or not a 2014 feature file?)") from err
                report.records_read += 1
                if raw in seen:
                    report.duplicate_records += 1
                    if len(report.duplicate_examples) < REPORT_EXAMPLES:
                        report.duplicate_examples.append(asin)
                    continue
                if not finite[k]:
                    report.nonfinite_records += 1
                    if len(report.nonfinite_examples) < REPORT_EXAMPLES:
                        report.nonfinite_examples.append(asin)
                    continue
                seen.add(raw)
                row = row_of.get(asin)
                if row is not None:
                    out[row] = chunk["values"][k]
                    found[row] = True
                    total += out[row]
            offset += len(buf)
    report.matched = int(found.sum())
    if report.matched == 0:
        raise StageError(
            f"{features_path}: none of the {len(item_ids)} items has a record "
            f"({report.records_read} records read; first item ids {item_ids[:3]})")
    missing = np.flatnonzero(~found)
    report.missing = len(missing)
    report.missing_examples = [item_ids[i] for i in missing[:REPORT_EXAMPLES]]
    if len(missing):
        out[missing] = (total / report.matched).astype(np.float32)
    return out, report


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vlif_pipeline original-features", description=__doc__.splitlines()[0])
    parser.add_argument("--features", required=True, type=Path, help="2014 image_features_<Cat>.b")
    parser.add_argument("--items", required=True, type=Path, help="k-core items.parquet (i, item_id)")
    parser.add_argument("--out", required=True, type=Path, help="float32 (I, 4096) .npy")
    parser.add_argument("--report", required=True, type=Path, help="JSON report")
    parser.add_argument("--log", default=None)
    return parser.parse_args(argv)


def _log_summary(log: logging.Logger, report: StreamReport, n_items: int) -> None:
    log.info("read %d records: %d of %d items matched, %d missing (mean vector), %d duplicates, %d non-finite",
             report.records_read, report.matched, n_items, report.missing,
             report.duplicate_records, report.nonfinite_records)
    if report.missing:
        log.warning("items without a feature record, e.g. %s", ", ".join(report.missing_examples))


def main(argv: list[str]) -> int:
    """CLI entry: ``original-features --features P --items P --out P --report P``."""
    args = _parse(argv)
    log = setup_logging(args.log, "vlif.original_features")

    def body() -> None:
        item_ids = read_item_ids(args.items)
        feats, report = stream_features(args.features, item_ids)
        _log_summary(log, report, len(item_ids))
        save_npy(args.out, feats)
        write_json(args.report, {"features": str(args.features), "items": str(args.items),
                                 "n_items": len(item_ids), "dim": FEATURE_DIM, **asdict(report)})

    return run_stage(body, log)
