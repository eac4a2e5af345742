"""Stage ``download``: fetch one raw file with retries, resume, timeouts, a size cap and a checksum.

Bytes go to ``<out>.part``, and what the first response said of the file (ETag, Last-Modified,
length) to ``<out>.part.json``; a retry after a dropped connection, or a rerun after a kill, asks
for the rest with an HTTP ``Range`` header and ``If-Range``, and starts over if the server ignores
the range, sends a changed file, or answers from another offset. Only a complete file that passes
the checks is renamed to ``<out>``, next to ``<out>.sha256`` (``sha256sum`` format); a file refused
for its content (an error page under a .gz name, over the size cap) is deleted, partial and all.
A source without a scheme or with ``file://`` is copied from the local path the same way, so a
dataset may name a URL or a path.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from vlif_pipeline.io import StageError, atomic_path, duration, run_stage, setup_logging

CHUNK = 1 << 20
RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "vlif-pipeline-download/1"


class _Retry(Exception):
    """A failure worth another attempt (network trouble, a 5xx, a short body)."""


class _Refused(StageError):
    """The bytes themselves are wrong (an error page, over the size cap): the partial file goes too.

    Other failures keep ``<out>.part`` so that a rerun resumes it.
    """


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total length) of a ``Content-Range: bytes a-b/total`` header; None where absent."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if match is None:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total.isdigit() else None)


def _validator_path(part: Path) -> Path:
    return part.with_name(part.name + ".json")


def _read_validator(part: Path, url: str) -> dict[str, Any] | None:
    """What the response that began ``part`` said about the file (ETag, Last-Modified, length)."""
    try:
        about = json.loads(_validator_path(part).read_text())
    except (OSError, ValueError):
        return None
    return about if isinstance(about, dict) and about.get("url") == url else None


def _write_validator(part: Path, url: str, response: http.client.HTTPResponse, length: int | None) -> None:
    with atomic_path(_validator_path(part)) as tmp:
        tmp.write_text(json.dumps({"url": url, "etag": response.headers.get("ETag"),
                                   "last_modified": response.headers.get("Last-Modified"), "length": length}))


def _discard_partial(part: Path) -> None:
    """Remove a partial download and what is known about it."""
    part.unlink(missing_ok=True)
    _validator_path(part).unlink(missing_ok=True)


def _fetch_once(url: str, part: Path, timeout: float, max_bytes: int, log: logging.Logger) -> None:
    """One HTTP attempt that appends to ``part``; raises ``_Retry`` or ``StageError`` on failure.

    A resume sends ``If-Range`` with the first response's ETag (or Last-Modified), so a server whose
    file changed since answers with the whole new file; a partial answer must start at the byte
    asked for and have the length first announced, else the download starts over.
    """
    validator = _read_validator(part, url) if part.exists() else None
    offset = part.stat().st_size if validator is not None else 0
    if part.exists() and validator is None:
        _discard_partial(part)  # bytes of unknown origin (an older version of this stage): start over
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if tag := validator.get("etag") or validator.get("last_modified"):
            headers["If-Range"] = tag
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 - the configured URL
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            total = _content_range(err.headers.get("Content-Range"))[1]
            if total == offset and validator.get("length") in (None, offset):
                return  # the previous attempt already had every byte
            _discard_partial(part)
            raise _Retry(f"HTTP 416 for a range starting at {offset}; starting over") from None
        if err.code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {err.code} {err.reason}") from None
        raise StageError(f"{url}: HTTP {err.code} {err.reason} (not retried)") from None
    except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
        raise _Retry(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
    except ValueError as err:  # a malformed URL ("http://[bad/x.gz", an invalid host name)
        raise StageError(f"{url}: invalid URL ({err})") from None

    with response:
        if offset and response.status == 206:
            start, expected = _content_range(response.headers.get("Content-Range"))
            known = validator.get("length")
            if start != offset or (known is not None and expected != known):
                _discard_partial(part)
                raise _Retry(
                    f"the server answered a resume at byte {offset} with Content-Range "
                    f"{response.headers.get('Content-Range')!r} (file length {known}); starting over"
                )
            mode = "ab"
            log.info("resuming %s at byte %d", url, offset)
        else:
            mode, offset = "wb", 0
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
        if expected is not None and expected > max_bytes:
            raise _Refused(f"{url}: {expected} bytes exceed the --max-bytes cap of {max_bytes}")
        written = offset
        started = time.monotonic()
        next_report = started + 30
        with open(part, mode) as fh:
            if mode == "wb":  # after the truncation: old bytes never sit under the new file's validator
                _write_validator(part, url, response, expected)
            try:
                while block := response.read(CHUNK):
                    fh.write(block)
                    written += len(block)
                    if written > max_bytes:
                        raise _Refused(f"{url}: more than the --max-bytes cap of {max_bytes} bytes")
                    if time.monotonic() > next_report:
                        log.info("%s", _progress(url, written, offset, expected, time.monotonic() - started))
                        next_report = time.monotonic() + 30
            except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as err:
                raise _Retry(f"connection lost after {written} bytes ({type(err).__name__}: {err})") from None
    if expected is not None and written < expected:
        raise _Retry(f"connection closed after {written} of {expected} bytes")


def _progress(url: str, written: int, offset: int, expected: int | None, seconds: float) -> str:
    """A progress line: bytes so far, the rate of this connection and, with a known size, the ETA."""
    rate = (written - offset) / max(seconds, 1e-9)
    line = f"{url}: {written / 2**20:.1f} MiB of {expected / 2**20:.1f} MiB" if expected else f"{url}: {written / 2**20:.1f} MiB"
    line += f" at {rate / 2**20:.2f} MiB/s"
    if expected and rate > 0:
        line += f", about {duration((expected - written) / rate)} left"
    return line


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
        raise _Refused(f"{out}: the download is not gzip data (starts with {head!r}); wrong URL or an error page?")


def download(
    url: str, out: Path, sha256: str | None, retries: int, timeout: float, backoff: float, max_bytes: int,
    log: logging.Logger,
) -> str:
    """Fetch ``url`` to ``out``, write ``out.sha256``; returns the hex digest."""
    part = out.with_name(out.name + ".part")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        digest = _download_part(url, part, sha256, retries, timeout, backoff, max_bytes, log)
        _check_content(out, part)
    except _Refused:
        _discard_partial(part)
        raise
    os.replace(part, out)
    _validator_path(part).unlink(missing_ok=True)
    with atomic_path(out.with_name(out.name + ".sha256")) as tmp:
        tmp.write_text(f"{digest}  {out.name}\n")
    log.info("downloaded %s -> %s (%d bytes, sha256 %s)", url, out, out.stat().st_size, digest)
    return digest


def _download_part(
    url: str, part: Path, sha256: str | None, retries: int, timeout: float, backoff: float, max_bytes: int,
    log: logging.Logger,
) -> str:
    """Fill ``part`` with the whole source, retrying transient failures; returns its hex sha256.

    ``StageError`` when hopeless."""
    try:
        parsed = urllib.parse.urlparse(url)
    except ValueError as err:
        raise StageError(f"{url}: invalid URL ({err})") from None
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
                _discard_partial(part)
                raise _Retry(f"sha256 mismatch: got {digest}, expected {sha256.lower()}")
            return digest
        except _Retry as err:
            attempt += 1
            if attempt > retries:
                raise StageError(f"{url}: giving up after {attempt} attempts; last error: {err}") from None
            delay = min(backoff * 2 ** (attempt - 1), 60.0)
            log.warning("%s: attempt %d failed (%s); retrying in %.1f s", url, attempt, err, delay)
            time.sleep(delay)


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
