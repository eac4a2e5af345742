"""Read raw review and meta dumps (gzip or plain) robustly and fast.

Reviews: blocks of whole lines go through polars' NDJSON parser (the fast path, tens of millions
of lines); a block that fails there is cut in pieces until the failing pieces are small, and those are
re-read line by line to name each bad line and its reason (the slow path). Meta records are read
in ``vlif_pipeline.amazon.meta``. Every problem is counted in a ``FileStats`` for the report.
"""

from __future__ import annotations

import gzip
import json
import math
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from queue import Full, Queue
from typing import IO, Any

import polars as pl

from vlif_pipeline.amazon.formats import ReleaseFormat
from vlif_pipeline.io import StageError

BLOCK_BYTES = 64 << 20
SLOW_PATH_BYTES = 256 << 10  # below this a failing block is explained line by line
SPLIT_PARTS = 16
MAX_EXAMPLES = 10


@dataclass
class FileStats:
    """What reading one file saw; ``bad_examples`` keeps the first few (line, reason) pairs."""

    path: str
    lines_read: int = 0
    blank_lines: int = 0
    records_parsed: int = 0
    bad_lines: int = 0
    bad_examples: list[dict[str, Any]] = field(default_factory=list)
    skipped_unreviewed: int = 0
    duplicate_ids: int = 0
    layouts: dict[str, list[int]] = field(default_factory=dict)  # meta: release -> [records, first line]

    def bad(self, line: int, reason: str) -> None:
        self.bad_lines += 1
        if len(self.bad_examples) < MAX_EXAMPLES:
            self.bad_examples.append({"line": line, "reason": reason})

    def check(self, max_bad_fraction: float) -> None:
        """Fail when nothing parsed or when bad lines exceed the tolerance."""
        considered = self.lines_read - self.blank_lines - self.skipped_unreviewed
        examples = "; ".join(f"line {e['line']}: {e['reason']}" for e in self.bad_examples)
        if considered <= 0 and self.skipped_unreviewed:
            raise StageError(
                f"{self.path}: none of its {self.skipped_unreviewed} records is for a reviewed item "
                "(meta of another category?)"
            )
        if considered <= 0:
            raise StageError(f"{self.path}: no records (only blank lines)")
        if self.records_parsed == 0:
            raise StageError(
                f"{self.path}: none of {considered} lines is a valid record (wrong file or format?): {examples}"
            )
        if self.bad_lines > max_bad_fraction * considered:
            raise StageError(
                f"{self.path}: {self.bad_lines} of {considered} lines are bad "
                f"({self.bad_lines / considered:.2%} > --max-bad-fraction {max_bad_fraction:.2%}): {examples}"
            )


def _open(path: Path) -> IO[bytes]:
    if not path.is_file():
        raise StageError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise StageError(f"{path}: empty file")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if path.suffix == ".gz":
        raise StageError(f"{path}: named .gz but not gzip data (first bytes {magic!r})")
    return open(path, "rb")


def _lines_before_corruption(path: Path) -> int:
    """Whole lines a corrupt gzip yields before its error, by decompressing it again in small pieces.

    Only on the error path: a failing read discards what it decompressed, so the streaming read
    cannot say how far it got, and reading small pieces throughout would slow every file down.
    """
    lines = 0
    with gzip.open(path, "rb") as fh:
        try:
            while piece := fh.read(64 << 10):
                lines += piece.count(b"\n")
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError):
            pass
    return lines


def _blocks(fh: IO[bytes], path: Path, block_bytes: int) -> Iterator[tuple[int, int, bytes]]:
    line_no = 1
    rest = b""
    while True:
        try:
            data = fh.read(block_bytes)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as err:
            last_good = _lines_before_corruption(path)
            raise StageError(f"{path}: corrupt or truncated gzip after line {last_good} ({err})") from None
        if not data:
            break
        data = rest + data
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            rest = data
            continue
        block, rest = data[:cut], data[cut:]
        n_lines = block.count(b"\n")
        yield line_no, n_lines, block
        line_no += n_lines
    if rest:
        yield line_no, 1, rest + b"\n"


def iter_blocks(path: Path, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, int, bytes]]:
    """Yield (first line number, number of lines, block of whole lines), decompressing as a stream.

    A reader thread decompresses the next block while the caller parses this one (zlib releases
    the GIL). A truncated or corrupt gzip becomes a ``StageError`` naming the last good line.
    """
    fh = _open(path)
    queue: Queue[Any] = Queue(maxsize=2)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in _blocks(fh, path, block_bytes):
                if not put(item):
                    return
            put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(err)
        finally:
            fh.close()

    reader = threading.Thread(target=produce, name=f"read-{path.name}", daemon=True)
    reader.start()
    try:
        while (item := queue.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join()


_END = object()


def _as_id(value: Any) -> str | None:
    """A non-blank string id, or an integral JSON number (2.0 and 2e3 too) as decimal digits, as polars reads it."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _as_int(value: Any) -> int | None:
    """An integral JSON number within int64 (the timestamp column's type), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and _INT64_MIN <= value <= _INT64_MAX:
        return value
    return None


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class _Columns:
    """Column buffers for the slow path."""

    def __init__(self) -> None:
        self.user: list[str] = []
        self.item: list[str] = []
        self.rating: list[float] = []
        self.time: list[int] = []
        self.line: list[int] = []

    def frame(self, fmt: ReleaseFormat) -> pl.DataFrame:
        return pl.DataFrame(
            {
                "user_id": self.user,
                "item_id": self.item,
                "rating": self.rating,
                "timestamp": self.time,
                "line": self.line,
            },
            schema=_OUT_SCHEMA,
        ).with_columns(pl.col("timestamp") // fmt.time_divisor)


_OUT_SCHEMA = {
    "user_id": pl.String,
    "item_id": pl.String,
    "rating": pl.Float32,
    "timestamp": pl.Int64,
    "line": pl.Int64,
}


def _review_slow(block: bytes, first_line: int, fmt: ReleaseFormat, stats: FileStats) -> pl.DataFrame:
    cols = _Columns()
    for offset, raw in enumerate(block.split(b"\n")[:-1]):
        line_no = first_line + offset
        if not raw.strip():
            stats.blank_lines += 1
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            stats.bad(line_no, f"not valid UTF-8 (byte {err.start})")
            continue
        except ValueError as err:
            stats.bad(line_no, f"not JSON ({err})")
            continue
        if not isinstance(rec, dict):
            stats.bad(line_no, f"a JSON {type(rec).__name__}, not an object")
            continue
        user, item = _as_id(rec.get(fmt.user)), _as_id(rec.get(fmt.item))
        rating, time = _as_number(rec.get(fmt.rating)), _as_int(rec.get(fmt.time))
        problems = [
            name
            for name, value in ((fmt.user, user), (fmt.item, item), (fmt.rating, rating), (fmt.time, time))
            if value is None
        ]
        if problems:
            stats.bad(line_no, "missing or invalid " + ", ".join(repr(p) for p in problems))
            continue
        cols.user.append(user)  # type: ignore[arg-type]
        cols.item.append(item)  # type: ignore[arg-type]
        cols.rating.append(rating)  # type: ignore[arg-type]
        cols.time.append(time)  # type: ignore[arg-type]
        cols.line.append(line_no)
    stats.records_parsed += len(cols.line)
    return cols.frame(fmt)


# what polars' String schema makes of a JSON bool, float, array or object (a JSON integer id is
# valid, as on the slow path); a quoted id that merely looks like one only costs a slow-path read
_NON_STRING_ID = r"^(?:true|false|\[.*\]|\{.*\}|-?\d*\.\d+)$"


def _coerced(column: str) -> pl.Expr:
    """True where a String column's value may stand for a non-string JSON value."""
    return pl.col(column).str.contains(_NON_STRING_ID).fill_null(False)


def _review_fast(
    block: bytes, first_line: int, n_lines: int, fmt: ReleaseFormat, stats: FileStats
) -> pl.DataFrame | None:
    """Parse a block with polars; ``None`` when the slow path must explain it line by line."""
    schema = {fmt.user: pl.String, fmt.item: pl.String, fmt.rating: pl.Float64, fmt.time: pl.Int64}
    try:
        df = pl.read_ndjson(block, schema=schema)
    except Exception:  # noqa: BLE001 - any parser complaint means: explain it on the slow path
        return None
    if df.height != n_lines:
        return None  # blank lines: row numbers no longer map to line numbers
    if df.select(pl.any_horizontal(_coerced(fmt.user), _coerced(fmt.item)).any()).item():
        return None  # an id that may have been a JSON bool, float, array or object: the slow path rejects those
    valid = (
        pl.col(fmt.user).str.strip_chars().str.len_bytes().fill_null(0) > 0
    ) & (pl.col(fmt.item).str.strip_chars().str.len_bytes().fill_null(0) > 0) & pl.col(
        fmt.rating
    ).is_finite().fill_null(False) & pl.col(fmt.time).is_not_null()
    df = df.with_row_index("line", offset=first_line).with_columns(valid.alias("_ok"))
    if not df.get_column("_ok").all():
        for row in df.filter(~pl.col("_ok")).iter_rows(named=True):
            missing = [repr(name) for name in schema if row[name] is None or row[name] == ""]
            stats.bad(row["line"], "missing or invalid " + (", ".join(missing) or "value"))
        df = df.filter(pl.col("_ok"))
    stats.records_parsed += df.height
    return df.select(
        pl.col(fmt.user).alias("user_id"),
        pl.col(fmt.item).alias("item_id"),
        pl.col(fmt.rating).cast(pl.Float32).alias("rating"),
        (pl.col(fmt.time) // fmt.time_divisor).alias("timestamp"),
        pl.col("line").cast(pl.Int64),
    )


def _split_lines(block: bytes, parts: int) -> list[bytes]:
    """Cut a block of whole lines into about ``parts`` pieces of whole lines."""
    pieces, start = [], 0
    step = max(len(block) // parts, 1)
    while start < len(block):
        end = block.find(b"\n", min(start + step, len(block)) - 1) + 1
        pieces.append(block[start:end])
        start = end
    return pieces


def _review_block(
    block: bytes, first_line: int, n_lines: int, fmt: ReleaseFormat, stats: FileStats
) -> list[pl.DataFrame]:
    """Fast path; on failure cut the block in 16 and retry each piece, so a bad line costs little."""
    frame = _review_fast(block, first_line, n_lines, fmt, stats)
    if frame is not None:
        return [frame]
    pieces = _split_lines(block, SPLIT_PARTS)
    if len(block) <= SLOW_PATH_BYTES or len(pieces) == 1:
        return [_review_slow(block, first_line, fmt, stats)]
    frames = []
    for piece in pieces:
        n_piece = piece.count(b"\n")
        frames.extend(_review_block(piece, first_line, n_piece, fmt, stats))
        first_line += n_piece
    return frames


def read_reviews(path: Path, fmt: ReleaseFormat, block_bytes: int = BLOCK_BYTES) -> tuple[pl.DataFrame, FileStats]:
    """All valid reviews as (user_id, item_id, rating f32, timestamp s, line), plus what was seen."""
    stats = FileStats(str(path))
    frames: list[pl.DataFrame] = []
    for first_line, n_lines, block in iter_blocks(path, block_bytes):
        stats.lines_read += n_lines
        frames.extend(_review_block(block, first_line, n_lines, fmt, stats))
    frames = [f for f in frames if f.height]
    reviews = pl.concat(frames) if frames else pl.DataFrame(schema=_OUT_SCHEMA)
    return reviews, stats
