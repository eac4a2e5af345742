"""Shared file helpers: atomic writes, safe tensor files and stage logging.

Every stage writes through these so that a killed job never leaves a file that looks finished
(Snakemake would otherwise trust its mtime) and so that no stage ever unpickles a file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class StageError(RuntimeError):
    """A user-facing failure: the message names the file, record and problem; no traceback needed."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the final suffix (some writers infer the format from it).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=final.suffix + ".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; results are shared files
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def require_columns(path: str | os.PathLike[str], columns: list[str], required: tuple[str, ...]) -> None:
    """Fail with the file's name and the missing and present columns when a table lacks any of ``required``."""
    missing = [c for c in required if c not in columns]
    if missing:
        raise StageError(f"{path}: missing column(s) {', '.join(missing)} (has {', '.join(columns)})")


def read_parquet_columns(path: str | os.PathLike[str], columns: tuple[str, ...]) -> Any:
    """The ``columns`` of a parquet file as a pyarrow table; a missing file or column, or a file that
    is not parquet, is one ``StageError`` line (pyarrow's own messages print the whole schema)."""
    import pyarrow.parquet as pq  # lazy: polars-free stages on the GPU machine import this module too

    if not Path(path).is_file():
        raise StageError(f"{path}: file not found")
    try:
        present = pq.read_schema(path).names
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: not a readable parquet file ({type(err).__name__})") from None
    require_columns(path, present, columns)
    try:
        return pq.read_table(path, columns=list(columns))
    except (OSError, ValueError) as err:
        raise StageError(f"{path}: cannot read columns {', '.join(columns)} ({type(err).__name__})") from None


def require_integer_column(path: str | os.PathLike[str], table: Any, name: str) -> np.ndarray:
    """Column ``name`` of a pyarrow table as int64, refusing nulls and non-integer types (no silent casts)."""
    import pyarrow as pa

    column = table.column(name)
    if not pa.types.is_integer(column.type):
        raise StageError(f"{path}: column {name!r} has type {column.type}, not an integer type")
    if column.null_count:
        row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise StageError(f"{path}: row {row}: column {name!r} is null")
    return column.to_numpy().astype(np.int64, copy=False)


def require_row_ids(path: str | os.PathLike[str], ids: list[int]) -> None:
    """Fail naming the first bad row unless column ``i`` is 0..n-1 in order (row k is item k)."""
    if ids != list(range(len(ids))):
        bad = next(k for k, value in enumerate(ids) if value != k)
        raise StageError(f"{path}: column i must be 0..{len(ids) - 1} in order; row {bad} has i={ids[bad]}")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON atomically, pretty-printed and with sorted keys (diffable, deterministic)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save one array atomically as .npy (loadable with ``allow_pickle=False``)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: str | os.PathLike[str], mmap: bool = False) -> np.ndarray:
    """Load a numeric .npy without ever unpickling; anything else is a ``StageError`` naming the file."""
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as err:  # missing, truncated, empty, pickled objects
        raise StageError(f"{path}: cannot read as .npy ({err})") from None
    if not isinstance(array, np.ndarray):  # np.load opens an .npz archive under any name
        array.close()
        raise StageError(f"{path}: an .npz archive, not a .npy array")
    if array.dtype.kind not in "biuf":
        raise StageError(f"{path}: dtype {array.dtype} is not a real number type")
    return array


def load_item_features(path: str | os.PathLike[str], n_items: int | None = None) -> np.ndarray:
    """An (items, dim) feature matrix as contiguous float32, checked: two dimensions, ``n_items`` rows
    when given, finite values (a NaN row would spread through every graph and model it reaches)."""
    array = load_npy(path, mmap=True)
    if array.ndim != 2:
        raise StageError(f"{path}: expected a 2-d (items, dim) array, got shape {array.shape}")
    if n_items is not None and array.shape[0] != n_items:
        raise StageError(f"{path}: expected shape ({n_items}, dim), got {array.shape}")
    array = np.array(array, dtype=np.float32, order="C")  # a writable copy of the memory map
    finite = np.isfinite(array).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise StageError(f"{path}: item {int(bad[0])} has a non-finite feature value ({bad.size} such items)")
    return array


def duration(seconds: float) -> str:
    """A short human duration for progress lines: 45 s, 12 min, 3.2 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def setup_logging(log_file: str | os.PathLike[str] | None, name: str = "vlif") -> logging.Logger:
    """Log to stderr and, when given, to the rule's ``log:`` file (appending, so retries accumulate)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.handlers.clear()
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    logger.propagate = False
    return logger


def run_stage(fn: Any, logger: logging.Logger) -> int:
    """Run a stage body, turning a ``StageError`` into one clear log line and exit code 1."""
    try:
        fn()
    except StageError as err:
        logger.error("%s", err)
        return 1
    return 0
