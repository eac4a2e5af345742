"""Stage ``download``: fetch one raw file with retries, resume, timeouts, a size cap and a checksum.

Bytes go to ``<out>.part``; a retry after a dropped connection asks for the rest with an HTTP
``Range`` header (and starts over if the server ignores it). Only a complete file that passes the
checks is renamed to ``<out>``, next to ``<out>.sha256`` (``sha256sum`` format). A source without
a scheme or with ``file://`` is copied from the local path the same way, so a dataset may name a
URL or a path.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from vlif_pipeline.io import StageError, atomic_path, run_stage, setup_logging

CHUNK = 1 << 20
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "vlif-pipeline-download/1"


class _Retry(Exception):
    """A failure worth another attempt (network trouble, a 5xx, a short body)."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _total_from_content_range(value: str | None) -> int | None:
    if not value or "/" not in value:
        return None
    total = value.rsplit("/", 1)[1].strip()
    return int(total) if total.isdigit() else None


def _fetch_once(url: str, part: Path, timeout: float, max_bytes: int, log: logging.Logger) -> None:
    """One HTTP attempt that appends to ``part``; raises ``_Retry`` or ``StageError`` on failure."""
    offset = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the configured URL
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            total = _total_from_content_range(err.headers.get("Content-Range"))
            if total == offset:
                return  # the previous attempt already had every byte
            part.unlink()
            raise _Retry(f"HTTP 416 for a range starting at {offset}; starting over") from None
        if err.code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        raise StageError(f"{url}: HTTP {err.code} {err.reason} (not retried)") from None
    except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
        raise _Retry(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None

    with response:
        if offset and response.status == 206:
            mode = "ab"
            expected = _total_from_content_range(response.headers.get("Content-Range"))
            log.info("resuming %s at byte %d", url, offset)
        else:
            mode, offset = "wb", 0
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise StageError(f"{url}: {expected} bytes exceed the --max-bytes cap of {max_bytes}")
        written = offset
        next_report = time.monotonic() + 30
        with open(part, mode) as fh:
            try:
                while block := response.read(CHUNK):
                    fh.write(block)
                    written += len(block)
                    if written > max_bytes:
                        raise StageError(f"{url}: more than the --max-bytes cap of {max_bytes} bytes")
                    if time.monotonic() > next_report:
                        log.info("%s: %d of %s bytes", url, written, expected or "?")
                        next_report = time.monotonic() + 30
            except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as err:
                raise _Retry(f"connection lost after {written} bytes ({type(err).__name__}: {err})") from None
    if expected is not None and written < expected:
        raise _Retry(f"connection closed after {written} of {expected} bytes")


def _copy_local(source: Path, part: Path, max_bytes: int) -> None:
    if not source.is_file():
        raise StageError(f"{source}: no such file")
    if source.stat().st_size > max_bytes:
        raise StageError(f"{source}: {source.stat().st_size} bytes exceed the --max-bytes cap of {max_bytes}")
    shutil.copyfile(source, part)


def _check_content(out: Path, part: Path) -> None:
    """A server error page saved under a .gz name is the classic silent failure; refuse it."""
    if out.suffix != ".gz":
        return
    with open(part, "rb") as fh:
        head = fh.read(16)
    if head[:2] != b"\x1f\x8b":
        raise StageError(f"{out}: the download is not gzip data (starts with {head!r}); wrong URL or an error page?")


def download(
    url: str, out: Path, sha256: str | None, retries: int, timeout: float, backoff: float, max_bytes: int,
    log: logging.Logger,
) -> str:
    """Fetch ``url`` to ``out``, write ``out.sha256``; returns the hex digest."""
    part = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    parsed = urllib.parse.urlparse(url)
    attempt = 0
    while True:
        try:
            if parsed.scheme in ("http", "https"):
                _fetch_once(url, part, timeout, max_bytes, log)
            elif parsed.scheme in ("", "file"):
                _copy_local(Path(urllib.parse.unquote(parsed.path) if parsed.scheme else url), part, max_bytes)
            else:
                raise StageError(f"{url}: unsupported scheme {parsed.scheme!r} (http, https, file or a path)")
            digest = sha256_of(part)
            if sha256 and digest != sha256.lower():
                part.unlink()
                raise _Retry(f"sha256 mismatch: got {digest}, expected {sha256.lower()}")
            break
        except _Retry as err:
            attempt += 1
            if attempt > retries:
                raise StageError(f"{url}: giving up after {attempt} attempts; last error: {err}") from None
            delay = min(backoff * 2 ** (attempt - 1), 60.0)
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", url, attempt, err, delay)
            time.sleep(delay)
    _check_content(out, part)
    os.replace(part, out)
    with atomic_path(out.with_name(out.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {out.name}\n")
    log.info("downloaded %s -> %s (%d bytes, sha256 %s)", url, out, out.stat().st_size, digest)
    return digest


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="download", description=__doc__)
    parser.add_argument("--url", required=True, help="http(s) URL, file:// URL or a local path")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--sha256", help="expected hex digest; a mismatch is retried, then fails")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per connect/read")
    parser.add_argument("--backoff", type=float, default=2.0, help="first retry delay in seconds, doubled each time")
    parser.add_argument("--max-bytes", type=int, default=64 << 30)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    log = setup_logging(args.log, "download")
    def body() -> None:
        download(args.url, args.out, args.sha256, args.retries, args.timeout, args.backoff, args.max_bytes, log)

    return run_stage(body, log)
