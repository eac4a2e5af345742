"""Gather caption shards into one table (stage ``caption-gather``).

Each shard written by ``caption`` carries ``shard``, ``n_shards`` and ``n_items`` in its parquet
metadata, so gathering can prove completeness: every shard 0..N-1 exactly once, all from the same
model and prompt, and every item 0..I-1 exactly once. Anything else is a StageError, never a silent
gap that would shift rows of the feature matrix.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from vlif_pipeline.io import StageError, atomic_path, run_stage, setup_logging
from vlif_pipeline.vision.captioner import OUTPUT_SCHEMA


def read_shard(path: Path) -> tuple[pa.Table, dict[str, int]]:
    """One shard's rows and its bookkeeping metadata."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise StageError(f"{path}: cannot read caption shard: {err}") from None
    missing = [name for name in OUTPUT_SCHEMA.names if name not in table.column_names]
    if missing:
        raise StageError(f"{path}: not a caption shard, missing columns {missing}")
    raw = (table.schema.metadata or {}).get(b"vlif")
    if raw is None:
        raise StageError(f"{path}: caption shard without its shard metadata (not written by the caption stage)")
    return table.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA), json.loads(raw)


def gather(paths: list[Path]) -> pa.Table:
    """Concatenate and validate the shards; rows sorted by item id."""
    tables, metas = zip(*(read_shard(p) for p in paths))
    first = metas[0]
    for path, meta in zip(paths, metas):
        if (meta["n_shards"], meta["n_items"]) != (first["n_shards"], first["n_items"]):
            raise StageError(
                f"{path}: shard of {meta['n_shards']} shards / {meta['n_items']} items, but {paths[0]} says "
                f"{first['n_shards']} / {first['n_items']}"
            )
    seen = sorted(meta["shard"] for meta in metas)
    if seen != list(range(first["n_shards"])):
        raise StageError(f"shards given {seen}, expected each of 0..{first['n_shards'] - 1} exactly once: {paths}")
    for column in ("model", "prompt_hash"):
        values = set().union(*(t[column].unique().to_pylist() for t in tables))
        if len(values) > 1:
            raise StageError(f"caption shards mix several values of {column}: {sorted(values)}")
    table = pa.concat_tables(tables).sort_by("i")
    ids = table["i"].to_pylist()
    if ids != list(range(first["n_items"])):
        counts = Counter(ids)
        dup = sorted(i for i, n in counts.items() if n > 1)
        absent = sorted(set(range(first["n_items"])) - counts.keys())
        raise StageError(f"caption shards {paths}: items duplicated {dup[:10]}, missing {absent[:10]} "
                         f"(of {first['n_items']})")
    return table


def main(argv: list[str]) -> int:
    """CLI: ``caption-gather --shards P... --out P [--log P]``."""
    parser = argparse.ArgumentParser(prog="caption-gather", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", required=True, nargs="+", type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log)

    def body() -> None:
        table = gather(args.shards).replace_schema_metadata(None)
        with atomic_path(args.out) as tmp:
            pq.write_table(table, tmp)
        logger.info("gathered %d shards, %d items -> %s", len(args.shards), table.num_rows, args.out)

    return run_stage(body, logger)
