"""The images stage against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import io
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from vlif_pipeline.vision import images as stage


def png_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


GOOD = png_bytes((200, 10, 10))
OTHER = png_bytes((10, 200, 10))
BIG_PIXELS = png_bytes((0, 0, 0), (400, 400))


class Handler(BaseHTTPRequestHandler):
    """Serves one behaviour per path; counts requests so tests can see retries and cache hits."""

    hits: Counter = Counter()
    flaky_left = {"n": 0}

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, code: int, body: bytes, ctype: str = "image/png") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the slow response): expected

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        Handler.hits[self.path] += 1
        if self.path in ("/good.png", "/good-copy.png"):
            self._send(200, GOOD)
        elif self.path == "/other.png":
            self._send(200, OTHER)
        elif self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/other.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/slow.png":
            time.sleep(1.5)
            self._send(200, GOOD)
        elif self.path == "/garbage.png":
            self._send(200, b"\x89PNG this is not really an image" * 10)
        elif self.path == "/page.html":
            self._send(200, b"<html>hello</html>", ctype="text/html")
        elif self.path == "/huge.png":
            self._send(200, b"\0" * 5000)
        elif self.path == "/huge-no-length.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(b"\0" * 5000)
        elif self.path == "/flaky.png":
            if Handler.flaky_left["n"] > 0:
                Handler.flaky_left["n"] -= 1
                self._send(503, b"busy", ctype="text/plain")
            else:
                self._send(200, OTHER)
        elif self.path == "/truncated.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(GOOD)))
            self.end_headers()
            self.wfile.write(GOOD[:20])
        elif self.path == "/bomb.png":
            self._send(200, BIG_PIXELS)
        elif self.path == "/drip.png":  # one byte every 0.1 s: each read is quick, the whole body is not
            try:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(GOOD)))
                self.end_headers()
                for k in range(len(GOOD)):
                    self.wfile.write(GOOD[k : k + 1])
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass
        else:
            self._send(404, b"not found", ctype="text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def write_items(path: Path, urls: list[str | None]) -> Path:
    pl.DataFrame(
        {"i": list(range(len(urls))), "item_id": [f"A{k}" for k in range(len(urls))],
         "title": [f"item {k}" for k in range(len(urls))], "image_url": urls},
        schema={"i": pl.Int64, "item_id": pl.String, "title": pl.String, "image_url": pl.String},
    ).write_parquet(path)
    return path


def run_stage(tmp_path: Path, urls: list[str | None], *extra: str) -> pl.DataFrame:
    items = write_items(tmp_path / "items.parquet", urls)
    out = tmp_path / "manifest.parquet"
    argv = ["--items", str(items), "--base-dir", str(tmp_path / "raw"), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--timeout", "0.5", "--retries", "2", "--backoff", "0.01", "--max-bytes", "4000",
            "--max-pixels", "100000", "--concurrency", "4", "--allow-local", "true", "--max-failed-fraction", "1",
            *extra]
    assert stage.main(argv) == 0
    return pl.read_parquet(out)


def test_statuses_against_local_server(tmp_path: Path, server: str) -> None:
    raw = tmp_path / "raw" / "images"
    raw.mkdir(parents=True)
    (raw / "local.png").write_bytes(OTHER)
    (raw / "broken.png").write_bytes(b"not a png")
    Handler.flaky_left["n"] = 2
    urls = [
        f"{server}/good.png", f"{server}/missing.png", f"{server}/slow.png", f"{server}/garbage.png",
        f"{server}/huge.png", f"{server}/redirect", None, f"{server}/page.html", f"{server}/flaky.png",
        f"{server}/bomb.png", "images/local.png", "images/broken.png", "images/absent.png", "  ",
        f"{server}/good-copy.png", f"{server}/huge-no-length.png", f"{server}/truncated.png",
    ]
    manifest = run_stage(tmp_path, urls)
    assert manifest.columns == ["i", "url", "path", "sha256", "status", "http_status", "width", "height"]
    assert manifest["i"].to_list() == list(range(len(urls)))
    assert manifest["status"].to_list() == [
        "ok", "http_error", "timeout", "not_an_image", "too_large", "ok", "missing_url", "not_an_image", "ok",
        "too_large", "ok", "not_an_image", "http_error", "missing_url", "ok", "too_large", "http_error",
    ]
    by_i = manifest.rows_by_key("i", named=True, unique=True)
    assert by_i[1]["http_status"] == 404
    assert by_i[12]["http_status"] is None  # a local file that is not there
    assert (by_i[0]["width"], by_i[0]["height"]) == (32, 24)
    # redirect, flaky-then-ok and the local file all hold the same bytes: one cache file
    assert by_i[5]["sha256"] == by_i[8]["sha256"] == by_i[10]["sha256"]
    assert by_i[0]["path"] == by_i[14]["path"] != by_i[5]["path"]
    for row in manifest.filter(pl.col("status") == "ok").iter_rows(named=True):
        assert Path(row["path"]).name == f"{row['sha256']}.png"
        assert Path(row["path"]).read_bytes() in (GOOD, OTHER)
    assert Handler.hits["/missing.png"] == 1  # a 404 is not retried
    assert Handler.hits["/slow.png"] == 3  # a timeout is retried (--retries 2)
    assert Handler.hits["/truncated.png"] == 3  # so is a truncated body
    assert Handler.flaky_left["n"] == 0
    assert not list((tmp_path / "cache").rglob("*.part"))


def test_rerun_reuses_cached_url_fetches(tmp_path: Path, server: str) -> None:
    urls = [f"{server}/other.png", f"{server}/other.png", f"{server}/garbage.png"]
    before = Handler.hits["/other.png"]
    first = run_stage(tmp_path, urls, "--concurrency", "1")
    assert Handler.hits["/other.png"] == before + 1  # the second item hits the URL index
    second = run_stage(tmp_path, urls)
    assert Handler.hits["/other.png"] == before + 1
    assert first.drop("http_status").equals(second.drop("http_status"))


def test_cached_urls_obey_this_runs_limits(tmp_path: Path, server: str) -> None:
    """A rerun with tighter limits gives what a fresh cache would: too_large, not the cached ok."""
    urls = [f"{server}/good.png"]
    assert run_stage(tmp_path, urls)["status"].to_list() == ["ok"]
    assert run_stage(tmp_path, urls, "--max-pixels", "100")["status"].to_list() == ["too_large"]
    assert run_stage(tmp_path, urls, "--max-bytes", "10")["status"].to_list() == ["too_large"]


def test_items_must_be_in_order(tmp_path: Path) -> None:
    items = tmp_path / "items.parquet"
    pl.DataFrame({"i": [0, 2], "image_url": ["a.png", "b.png"]}).write_parquet(items)
    with pytest.raises(stage.StageError, match="row 1 has i=2"):
        stage.read_items(items)


def test_inspect_rejects_pixel_bombs() -> None:
    cfg = stage.FetchConfig(max_pixels=1000)
    with pytest.raises(stage.FetchFailure) as info:
        stage.inspect_image(png_bytes((1, 2, 3), (100, 100)), cfg)
    assert info.value.status == "too_large"
    assert stage.inspect_image(png_bytes((1, 2, 3), (20, 20)), cfg) == ("png", 20, 20)


def test_damaged_cache_file_is_fetched_again(tmp_path: Path, server: str) -> None:
    first = run_stage(tmp_path, [f"{server}/good.png"])
    cached = Path(first["path"][0])
    cached.write_bytes(b"damaged")
    second = run_stage(tmp_path, [f"{server}/good.png"])
    assert second["status"].to_list() == ["ok"]
    assert cached.read_bytes() == GOOD


def test_truncated_jpeg_is_not_an_image() -> None:
    """Pillow's verify() reads no JPEG image data; the full decode must catch a cut-off file."""
    buf = io.BytesIO()
    Image.effect_noise((128, 96), 60).convert("RGB").save(buf, format="JPEG")  # noise: the scan data dominates
    data = buf.getvalue()
    assert stage.inspect_image(data, stage.FetchConfig()) == ("jpg", 128, 96)
    with pytest.raises(stage.FetchFailure) as info:
        stage.inspect_image(data[: len(data) * 3 // 4], stage.FetchConfig())
    assert info.value.status == "not_an_image"


def test_body_trickling_past_the_deadline_times_out(tmp_path: Path, server: str) -> None:
    start = time.monotonic()
    manifest = run_stage(tmp_path, [f"{server}/drip.png"], "--retries", "0")
    assert manifest["status"].to_list() == ["timeout"]
    assert time.monotonic() - start < 3  # the body would take over 10 s


def test_malformed_url_is_an_item_status(tmp_path: Path) -> None:
    manifest = run_stage(tmp_path, ["http://[bad/x.png", "http://a..b/x.png"])
    assert manifest["status"].to_list() == ["http_error", "http_error"]


def test_local_paths_are_refused_unless_allowed(tmp_path: Path) -> None:
    """The dump names its image URLs: by default it cannot make the stage read a file of this machine."""
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "local.png").write_bytes(OTHER)
    urls = ["local.png", f"file://{tmp_path / 'raw' / 'local.png'}", "/etc/hostname"]
    manifest = run_stage(tmp_path, urls, "--allow-local", "false")
    assert manifest["status"].to_list() == ["local_not_allowed"] * 3


def test_allowed_local_paths_read_regular_files_only_within_the_limits(tmp_path: Path) -> None:
    """/dev/zero once took this stage to 2.7 GB and a MemoryError; a FIFO would block forever."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "good.png").write_bytes(OTHER)
    (raw / "big.bin").write_bytes(b"\0" * 10_000)  # over --max-bytes 4000
    os.symlink(raw / "big.bin", raw / "link-to-big")
    os.symlink(raw / "good.png", raw / "link-to-good")
    os.mkfifo(raw / "fifo")
    (raw / "folder").mkdir()
    urls = ["/dev/zero", "fifo", "folder", "link-to-big", "link-to-good", "good.png", "/dev/null"]
    start = time.monotonic()
    manifest = run_stage(tmp_path, urls)
    assert manifest["status"].to_list() == [
        "not_a_file", "not_a_file", "not_a_file", "too_large", "ok", "ok", "not_a_file"
    ]
    assert time.monotonic() - start < 5


def test_too_many_items_without_an_image_fail_the_stage(tmp_path: Path, server: str) -> None:
    """A run where (nearly) every image failed must not look like any other: no manifest, and why."""
    items = write_items(tmp_path / "items.parquet", [f"{server}/missing.png", None, None, f"{server}/good.png"])
    out, log = tmp_path / "manifest.parquet", tmp_path / "images.log"
    argv = ["--items", str(items), "--base-dir", str(tmp_path), "--cache-dir", str(tmp_path / "cache"),
            "--out", str(out), "--retries", "0", "--log", str(log)]
    assert stage.main(argv) == 1
    assert not out.exists()
    message = log.read_text()
    assert "3 of 4 items have no usable image" in message and "missing_url=2" in message and "http_error=1" in message
    assert "images.max_failed_fraction 0.5" in message
    assert stage.main([*argv, "--max-failed-fraction", "0.8"]) == 0 and out.exists()
