"""Read a meta dump: one record per line, JSON or a Python literal, into cleaned item rows.

Python literals (the 2014 release) are translated to JSON token by token where that is exactly
equivalent and parsed with ``ast.literal_eval`` otherwise, never with ``eval``. Parsing and cleaning
cost ~100 us per line, so large files are processed in chunks by worker processes; lines whose id
(found by a cheap regex) is not a reviewed item are skipped unparsed.
"""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import re
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlif_pipeline.amazon.formats import FORMATS, ReleaseFormat
from vlif_pipeline.amazon.items import Row, item_row
from vlif_pipeline.amazon.readers import FileStats, iter_blocks
from vlif_pipeline.io import StageError

CHUNK_BYTES = 4 << 20
PARALLEL_MIN_BYTES = 8 << 20  # smaller files are parsed in this process

# A single-quoted string without quotes or backslashes inside is the same string in double quotes;
# any other string token goes through literal_eval and json.dumps.
_PY_TOKEN = re.compile(r"""'([^'\\"]*)'|("[^"\\]*")|\b(True|False|None)\b|('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
_PY_CONST = {"True": "true", "False": "false", "None": "null"}


def _json_token(match: re.Match[str]) -> str:
    group = match.lastindex
    if group == 1:
        return '"' + match.group(1) + '"'
    if group == 2:
        return match.group(2)
    if group == 3:
        return _PY_CONST[match.group(3)]
    return json.dumps(ast.literal_eval(match.group(4)))


def parse_record(text: str) -> Any:
    """One meta line: JSON, or a Python literal (parsed as data, never executed).

    Raises ``ValueError`` (or ``SyntaxError``) when the line is neither.
    """
    try:
        return json.loads(text)
    except ValueError:
        pass
    if '"' not in text and "\\" not in text:
        try:
            return json.loads(text.replace("'", '"'))
        except ValueError:
            pass
    try:
        return json.loads(_PY_TOKEN.sub(_json_token, text), strict=False)
    except (ValueError, SyntaxError):
        pass
    return ast.literal_eval(text)


@dataclass
class _ChunkResult:
    lines: int = 0
    blank: int = 0
    skipped: int = 0
    parsed: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)
    rows: list[tuple[str, Row]] = field(default_factory=list)
    layouts: dict[str, tuple[int, int]] = field(default_factory=dict)  # release -> (records, first line)


def _meta_chunk(first_line: int, chunk: bytes, fmt: ReleaseFormat, wanted: set[str] | None) -> _ChunkResult:
    """Parse, validate and clean the lines of one chunk."""
    out = _ChunkResult()
    id_pattern = re.compile(r"""['"]""" + re.escape(fmt.meta_id) + r"""['"]\s*:\s*['"]([^'"\\]+)['"]""")
    for offset, raw in enumerate(chunk.split(b"\n")[:-1]):
        line_no = first_line + offset
        out.lines += 1
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            out.bad.append((line_no, f"not valid UTF-8 (byte {err.start})"))
            continue
        if not text:
            out.blank += 1
            continue
        if wanted is not None:
            quick = id_pattern.search(text)
            if quick is not None and quick.group(1) not in wanted:
                out.skipped += 1
                continue
        try:
            rec = parse_record(text)
        except (ValueError, SyntaxError, RecursionError, MemoryError) as err:
            out.bad.append((line_no, f"neither JSON nor a Python literal ({type(err).__name__}: {err})"[:200]))
            continue
        if not isinstance(rec, dict):
            out.bad.append((line_no, f"a {type(rec).__name__}, not a record"))
            continue
        for name, release in FORMATS.items():
            if release.meta_signature.intersection(rec):
                count, first = out.layouts.get(name, (0, line_no))
                out.layouts[name] = (count + 1, first)
        item_id = rec.get(fmt.meta_id)
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        if not isinstance(item_id, str) or not item_id.strip():
            out.bad.append((line_no, f"missing or invalid {fmt.meta_id!r}"))
            continue
        out.parsed += 1
        if wanted is not None and item_id not in wanted:
            out.skipped += 1
            continue
        try:
            out.rows.append((item_id, item_row(item_id, rec, fmt)))
        except (TypeError, ValueError, AttributeError) as err:
            out.bad.append((line_no, f"unusable field values ({type(err).__name__}: {err})"[:200]))
    return out


_worker_fmt: ReleaseFormat | None = None
_worker_wanted: set[str] | None = None


def _init_worker(fmt_name: str, wanted: set[str] | None) -> None:
    global _worker_fmt, _worker_wanted  # noqa: PLW0603 - per-process state of a pool worker
    _worker_fmt, _worker_wanted = FORMATS[fmt_name], wanted


def _worker_chunk(first_line: int, chunk: bytes) -> _ChunkResult:
    assert _worker_fmt is not None
    return _meta_chunk(first_line, chunk, _worker_fmt, _worker_wanted)


def _chunks(path: Path) -> Iterator[tuple[int, bytes]]:
    """Split the file's blocks further into ~CHUNK_BYTES pieces of whole lines."""
    for first_line, _, block in iter_blocks(path):
        start = 0
        while start < len(block):
            end = block.find(b"\n", min(start + CHUNK_BYTES, len(block) - 1)) + 1
            piece = block[start:end]
            yield first_line, piece
            first_line += piece.count(b"\n")
            start = end


def check_layout(stats: FileStats, fmt: ReleaseFormat) -> None:
    """Refuse a meta file whose records are mostly in another release's layout and never in
    ``fmt``'s: read as ``fmt``, every image URL and category would silently come out missing."""
    own = stats.layouts.get(fmt.name, [0, 0])[0]
    for name, (count, first) in stats.layouts.items():
        if name != fmt.name and own == 0 and count > stats.records_parsed / 2:
            keys = ", ".join(sorted(FORMATS[name].meta_signature))
            raise StageError(
                f"{stats.path}: line {first} and {count - 1} more records are in the {name} meta layout "
                f"(keys {keys}), none in the declared {fmt.name} layout; read as {fmt.name}, their image "
                f"URLs and categories would all be missing. Set the dataset's format to {name}, or give "
                f"the {fmt.name} meta file."
            )


def default_workers() -> int:
    """Worker processes for meta parsing: the CPUs this process may use, at most 4."""
    return max(1, min(4, len(os.sched_getaffinity(0))))


def read_meta(
    path: Path, fmt: ReleaseFormat, wanted: set[str] | None, workers: int = 1
) -> tuple[dict[str, Row], FileStats]:
    """Cleaned item rows by id (the first record of an id wins), only for ``wanted`` ids when given."""
    stats = FileStats(str(path))
    rows: dict[str, Row] = {}

    def merge(result: _ChunkResult) -> None:
        stats.lines_read += result.lines
        stats.blank_lines += result.blank
        stats.skipped_unreviewed += result.skipped
        stats.records_parsed += result.parsed
        for line_no, reason in result.bad:
            stats.bad(line_no, reason)
        for item_id, row in result.rows:
            if item_id in rows:
                stats.duplicate_ids += 1
            else:
                rows[item_id] = row
        for name, (count, first) in result.layouts.items():
            seen = stats.layouts.setdefault(name, [0, first])
            seen[0] += count
            seen[1] = min(seen[1], first)

    if workers <= 1 or path.stat().st_size < PARALLEL_MIN_BYTES:
        for first_line, chunk in _chunks(path):
            merge(_meta_chunk(first_line, chunk, fmt, wanted))
        return rows, stats
    context = multiprocessing.get_context("spawn")  # no fork: the parent runs polars' thread pool
    try:
        with ProcessPoolExecutor(workers, context, initializer=_init_worker, initargs=(fmt.name, wanted)) as pool:
            pending: deque[Future[_ChunkResult]] = deque()
            for task in _chunks(path):
                pending.append(pool.submit(_worker_chunk, *task))
                if len(pending) > 2 * workers:
                    merge(pending.popleft().result())
            while pending:
                merge(pending.popleft().result())
    except BrokenProcessPool as err:
        raise StageError(f"{path}: a meta parsing worker died ({err}); out of memory? try --workers 1") from None
    return rows, stats
