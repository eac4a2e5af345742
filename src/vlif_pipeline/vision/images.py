"""Fetch product images into a content-addressed cache and write the manifest (stage ``images``).

Each item's ``image_url`` is an http(s) URL or, with ``--allow-local true`` only, a local path or
``file://`` URL (relative paths resolve against ``--base-dir``): the URLs come from the dump, and a
dump is not trusted to name files on this machine. A local path must be a regular file (a symlink
counts as its target); it is read under the same byte cap, deadline and pixel guard as a download.
Bytes are fetched with bounded concurrency (threads: the work is I/O), a per-request
timeout and an overall deadline, retries with exponential backoff for transient failures (timeouts,
connection errors, 408/429/5xx), a size cap, a content-type check, and Pillow verification with a
pixel-count guard against decompression bombs. Good images are stored as ``<cache>/<sha256[:2]>/
<sha256>.<ext>`` (written atomically, shared by all datasets); successful URL fetches are remembered
under ``<cache>/by-url/`` so a rerun does not download them again.

Statuses: ``ok``; ``missing_url`` (no URL); ``http_error`` (could not obtain the bytes: HTTP code in
``http_status``, or a connection error, truncated body or unreadable local file);
``timeout``; ``not_an_image`` (wrong content type or Pillow cannot read it); ``too_large`` (bytes over
``--max-bytes`` or pixels over ``--max-pixels``); ``local_not_allowed`` (a local path without
``--allow-local true``); ``not_a_file`` (a local path to a device, FIFO, directory or other
non-regular file: never opened). One row per item, in item order.

When more than ``--max-failed-fraction`` of the items end without a usable image, the stage fails
with the count of each status instead of writing a manifest that would make the captions text-only.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import io
import logging
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
from PIL import Image

from vlif_pipeline.io import StageError, atomic_path, require_row_ids, run_stage, setup_logging

STATUSES = ("ok", "missing_url", "http_error", "timeout", "not_an_image", "too_large", "local_not_allowed", "not_a_file")
RETRYABLE_HTTP = {408, 425, 429, 500, 502, 503, 504}
USER_AGENT = "vlif-pipeline/0.1 (product image fetcher)"
MANIFEST_SCHEMA = {
    "i": pl.Int64,
    "url": pl.String,
    "path": pl.String,
    "sha256": pl.String,
    "status": pl.String,
    "http_status": pl.Int32,
    "width": pl.Int32,
    "height": pl.Int32,
}


@dataclass(frozen=True)
class FetchConfig:
    """Limits for one fetch; ``backoff`` is the first retry's delay in seconds (then doubled)."""

    timeout: float = 10.0
    retries: int = 3
    max_bytes: int = 20_000_000
    max_pixels: int = 89_478_485
    backoff: float = 0.5
    allow_local: bool = False


@dataclass
class ManifestRow:
    """One manifest row (see the module docstring for the statuses)."""

    i: int
    url: str | None
    path: str | None = None
    sha256: str | None = None
    status: str = "ok"
    http_status: int | None = None
    width: int | None = None
    height: int | None = None


class FetchFailure(Exception):
    """A fetch that ended without bytes; carries the manifest status and HTTP code."""

    def __init__(self, status: str, http_status: int | None, detail: str, retryable: bool) -> None:
        super().__init__(detail)
        self.status = status
        self.http_status = http_status
        self.retryable = retryable


def _is_remote(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


def _read_capped(
    read: Callable[[], bytes], cfg: FetchConfig, deadline: float, what: str, code: int | None, retry_timeout: bool
) -> bytes:
    """All of ``read()``'s pieces, refused past ``cfg.max_bytes`` bytes or past ``deadline``."""
    chunks, size = [], 0
    while chunk := read():
        size += len(chunk)
        if size > cfg.max_bytes:
            raise FetchFailure("too_large", code, f"{what} exceeds {cfg.max_bytes} bytes", False)
        if time.monotonic() > deadline:
            raise FetchFailure("timeout", code, f"{what} not complete within {cfg.timeout}s", retry_timeout)
        chunks.append(chunk)
    return b"".join(chunks)


def _read_http(url: str, cfg: FetchConfig) -> tuple[bytes, int]:
    """GET ``url`` (redirects followed by urllib) within the size cap and an overall deadline."""
    deadline = time.monotonic() + cfg.timeout
    try:
        request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
        with urllib.request.urlopen(request, timeout=cfg.timeout) as response:
            code = response.status
            ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise FetchFailure("not_an_image", code, f"content type {ctype!r}", retryable=False)
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > cfg.max_bytes:
                raise FetchFailure("too_large", code, f"Content-Length {length} > {cfg.max_bytes}", False)
            # read1: whatever has arrived (at most one socket read), so that a server trickling bytes
            # slower than the per-read timeout still meets the whole-body deadline
            body = _read_capped(lambda: response.read1(64 * 1024), cfg, deadline, "body", code, retry_timeout=True)
            if length and length.isdigit() and len(body) < int(length):
                raise FetchFailure("http_error", code, f"truncated body: {len(body)} of {length} bytes", True)
            return body, code
    except urllib.error.HTTPError as err:
        raise FetchFailure("http_error", err.code, f"HTTP {err.code}", err.code in RETRYABLE_HTTP) from None
    except TimeoutError:
        raise FetchFailure("timeout", None, f"timed out after {cfg.timeout}s", True) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise FetchFailure("timeout", None, f"timed out after {cfg.timeout}s", True) from None
        raise FetchFailure("http_error", None, f"connection error: {err.reason}", True) from None
    except (OSError, http.client.HTTPException) as err:  # resets, truncated bodies, bad status lines
        raise FetchFailure("http_error", None, f"connection error: {err!r}", True) from None
    except ValueError as err:  # a malformed URL ("http://[bad/x.jpg", an invalid host name)
        raise FetchFailure("http_error", None, f"invalid URL: {err}", False) from None


def _read_local(url: str, base_dir: Path, cfg: FetchConfig) -> bytes:
    """A regular file's bytes within the byte cap and the deadline; anything else is refused unread."""
    path = Path(url[len("file://"):] if url.startswith("file://") else url)
    path = path if path.is_absolute() else base_dir / path
    deadline = time.monotonic() + cfg.timeout
    try:
        info = path.stat()  # of a symlink's target
        if not stat.S_ISREG(info.st_mode):
            raise FetchFailure("not_a_file", None, f"{path} is not a regular file (mode {oct(info.st_mode)})", False)
        if info.st_size > cfg.max_bytes:
            raise FetchFailure("too_large", None, f"{path} has {info.st_size} bytes > {cfg.max_bytes}", False)
        # O_NONBLOCK: should the path become a FIFO after the check, opening it does not hang
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise FetchFailure("not_a_file", None, f"{path} is not a regular file", False)
            return _read_capped(lambda: fh.read(1 << 20), cfg, deadline, str(path), None, retry_timeout=False)
    except OSError as err:
        raise FetchFailure("http_error", None, f"cannot read {path}: {err.strerror}", False) from None


def fetch_bytes(url: str, base_dir: Path, cfg: FetchConfig) -> tuple[bytes, int | None]:
    """The bytes behind ``url`` and the HTTP status (None for local files), retrying with backoff."""
    if not _is_remote(url):
        return _read_local(url, base_dir, cfg), None
    attempt = 0
    while True:
        try:
            return _read_http(url, cfg)
        except FetchFailure as failure:
            if not failure.retryable or attempt >= cfg.retries:
                raise
            time.sleep(cfg.backoff * 2**attempt)
            attempt += 1


def inspect_image(data: bytes, cfg: FetchConfig) -> tuple[str, int, int]:
    """Return (format extension, width, height) after Pillow verifies the bytes; raise FetchFailure."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            fmt = (img.format or "img").lower()
            if width * height > cfg.max_pixels:
                raise FetchFailure("too_large", None, f"{width}x{height} pixels > {cfg.max_pixels}", False)
            img.verify()  # checksums and structure; for JPEG and GIF it reads no image data
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode: a truncated JPEG or GIF fails here, not in the captioner
    except FetchFailure:
        raise
    except Image.DecompressionBombError as err:
        raise FetchFailure("too_large", None, f"decompression bomb: {err}", False) from None
    except Exception as err:  # Pillow raises many types for corrupt data; all mean "not an image"
        raise FetchFailure("not_an_image", None, f"Pillow cannot read it: {err}", False) from None
    return ("jpg" if fmt == "jpeg" else fmt), width, height


class ImageCache:
    """Content-addressed image store plus a URL index of past successful fetches."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha: str, ext: str) -> Path:
        return self.root / sha[:2] / f"{sha}.{ext}"

    def _url_entry(self, url: str) -> Path:
        digest = hashlib.sha256(url.encode()).hexdigest()
        return self.root / "by-url" / digest[:2] / digest

    def lookup_url(self, url: str) -> tuple[str, str] | None:
        """(sha256, ext) of a previous good fetch of ``url`` whose bytes are still in the cache."""
        entry = self._url_entry(url)
        if not entry.is_file():
            return None
        sha, _, ext = entry.read_text().strip().partition(".")
        return (sha, ext) if self.path_for(sha, ext).is_file() else None

    def store(self, data: bytes, ext: str, url: str | None) -> tuple[str, Path]:
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_for(sha, ext)
        if not path.is_file():
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        if url is not None:
            with atomic_path(self._url_entry(url)) as tmp:
                tmp.write_text(f"{sha}.{ext}\n")
        return sha, path


def process_item(i: int, url: str | None, base_dir: Path, cache: ImageCache, cfg: FetchConfig) -> ManifestRow:
    """Fetch, verify and cache one item's image; every failure becomes a status, never an exception."""
    if url is None or not url.strip():
        return ManifestRow(i, None, status="missing_url")
    url = url.strip()
    remote = _is_remote(url)
    if not remote and not cfg.allow_local:
        return ManifestRow(i, url, status="local_not_allowed")
    if remote and (hit := cache.lookup_url(url)) is not None:
        sha, ext = hit
        path = cache.path_for(sha, ext)
        try:
            with Image.open(path) as img:
                width, height = img.size
            # this run's limits, as a fresh fetch would apply them: the manifest must not depend on the cache
            if path.stat().st_size > cfg.max_bytes or width * height > cfg.max_pixels:
                return ManifestRow(i, url, status="too_large")
            return ManifestRow(i, url, str(path), sha, "ok", None, width, height)
        except OSError:
            path.unlink(missing_ok=True)  # a damaged cache file: fetch again
    try:
        data, code = fetch_bytes(url, base_dir, cfg)
        ext, width, height = inspect_image(data, cfg)
    except FetchFailure as failure:
        return ManifestRow(i, url, status=failure.status, http_status=failure.http_status)
    sha, path = cache.store(data, ext, url if remote else None)
    return ManifestRow(i, url, str(path), sha, "ok", code, width, height)


def read_items(path: Path) -> pl.DataFrame:
    """The k-core items table's ``i`` and ``image_url``, checked for the contract's shape."""
    try:
        items = pl.read_parquet(path, columns=["i", "image_url"])
    except (OSError, pl.exceptions.PolarsError) as err:
        raise StageError(f"{path}: cannot read columns i, image_url: {err}") from None
    require_row_ids(path, items["i"].to_list())
    return items


def build_manifest(
    items: pl.DataFrame, base_dir: Path, cache_dir: Path, cfg: FetchConfig, concurrency: int,
    logger: logging.Logger,
) -> pl.DataFrame:
    """Process every item with ``concurrency`` threads; rows come back in item order."""
    cache = ImageCache(cache_dir)
    rows: list[ManifestRow] = []
    pairs = list(zip(items["i"].to_list(), items["image_url"].to_list()))
    step = max(1, len(pairs) // 10)
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for row in pool.map(lambda pair: process_item(pair[0], pair[1], base_dir, cache, cfg), pairs):
            rows.append(row)
            if len(rows) % step == 0:
                logger.info("images: %d / %d done", len(rows), len(pairs))
    return pl.DataFrame([asdict(row) for row in rows], schema=MANIFEST_SCHEMA)


def _flag(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text.lower() == "true"


def main(argv: list[str]) -> int:
    """CLI: ``images --items P --base-dir D --cache-dir C --out P [limits] [--log P]``."""
    parser = argparse.ArgumentParser(prog="images", description=__doc__.splitlines()[0])
    parser.add_argument("--items", required=True, type=Path)
    parser.add_argument("--base-dir", required=True, type=Path, help="resolves relative image paths")
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--max-bytes", type=int, default=20_000_000)
    parser.add_argument("--max-pixels", type=int, default=89_478_485, help="decompression-bomb guard")
    parser.add_argument("--backoff", type=float, default=0.5, help="first retry delay, doubled each time")
    parser.add_argument("--allow-local", type=_flag, default=False, help="true: local paths and file:// too")
    parser.add_argument("--max-failed-fraction", type=float, default=0.5,
                        help="fail when a larger share of the items has no usable image")
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log)

    def body() -> None:
        if args.concurrency < 1 or args.retries < 0 or args.timeout <= 0 or args.max_bytes < 1:
            raise StageError("--concurrency >= 1, --retries >= 0, --timeout > 0 and --max-bytes >= 1 required")
        cfg = FetchConfig(
            args.timeout, args.retries, args.max_bytes, args.max_pixels, args.backoff, args.allow_local
        )
        items = read_items(args.items)
        manifest = build_manifest(items, args.base_dir, args.cache_dir, cfg, args.concurrency, logger)
        counts = manifest["status"].value_counts(sort=True)
        summary = ", ".join(f"{s}={n}" for s, n in counts.iter_rows())
        failed = int((manifest["status"] != "ok").sum())
        if failed > args.max_failed_fraction * manifest.height:
            hint = " (local paths need images.allow_local: true)" if "local_not_allowed" in summary else ""
            raise StageError(
                f"images: {failed} of {manifest.height} items have no usable image ({summary}){hint}, over "
                f"images.max_failed_fraction {args.max_failed_fraction}; captions would be text-only. Check "
                "the URLs and the network, or raise images.max_failed_fraction to accept it"
            )
        with atomic_path(args.out) as tmp:
            manifest.write_parquet(tmp)
        logger.info("images: %d items -> %s (%s)", manifest.height, args.out, summary)
        if failed:
            logger.warning("images: %d of %d items have no usable image (%s)", failed, manifest.height, summary)

    return run_stage(body, logger)
