"""download against a local HTTP server on 127.0.0.1: drops, 500s, resume, checksums. Never the internet."""

from __future__ import annotations

import gzip
import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from vlif_pipeline.amazon import download

PAYLOAD = gzip.compress(bytes(range(256)) * 4000, compresslevel=0)  # ~1 MB, gzip magic in front


class Server:
    """A tiny range-aware server whose misbehaviour each test scripts."""

    def __init__(self) -> None:
        # per request: "ok", "500", "drop" (half the body, then close), "404", "norange", "badstart" (a 206
        # from byte 0 whatever the range asked); ETag and If-Range as a real server: a changed file is sent whole
        self.plan: list[str] = []
        self.ranges: list[str | None] = []
        self.body = PAYLOAD
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                outer.ranges.append(self.headers.get("Range"))
                action = outer.plan.pop(0) if outer.plan else "ok"
                if action in ("500", "404"):
                    self.send_error(int(action))
                    return
                start = 0
                rng = self.headers.get("Range")
                etag = f'"{hashlib.sha256(outer.body).hexdigest()[:16]}"'
                if_range = self.headers.get("If-Range")
                if rng and action != "norange" and if_range in (None, etag):
                    start = 0 if action == "badstart" else int(rng.removeprefix("bytes=").rstrip("-"))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(outer.body) - 1}/{len(outer.body)}")
                else:
                    self.send_response(200)
                self.send_header("ETag", etag)
                body = outer.body[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if action == "drop":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        class QuietServer(ThreadingHTTPServer):
            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that hang up early (the size-cap test) are expected here

        self.httpd = QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/reviews.json.gz"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    thread = threading.Thread(target=srv.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def _run(url: str, out: Path, *extra: str) -> int:
    return download.main(["--url", url, "--out", str(out), "--retries", "3", "--timeout", "5",
                          "--backoff", "0.01", "--log", str(out.parent / "log.txt"), *extra])


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_plain_download_writes_checksum(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "raw" / "reviews.json.gz"
    assert _run(server.url, out, "--sha256", _digest(PAYLOAD)) == 0
    assert out.read_bytes() == PAYLOAD
    assert (tmp_path / "raw" / "reviews.json.gz.sha256").read_text() == f"{_digest(PAYLOAD)}  reviews.json.gz\n"
    assert not (tmp_path / "raw" / "reviews.json.gz.part").exists()


def test_dropped_connection_resumes_with_range(server: Server, tmp_path: Path) -> None:
    server.plan = ["drop", "drop"]
    out = tmp_path / "reviews.json.gz"
    assert _run(server.url, out) == 0
    assert out.read_bytes() == PAYLOAD
    assert server.ranges[0] is None
    first_resume = int(server.ranges[1].removeprefix("bytes=").rstrip("-"))
    second_resume = int(server.ranges[2].removeprefix("bytes=").rstrip("-"))
    assert 0 < first_resume < second_resume < len(PAYLOAD)


def test_server_error_then_success(server: Server, tmp_path: Path) -> None:
    server.plan = ["500", "500"]
    out = tmp_path / "reviews.json.gz"
    assert _run(server.url, out) == 0
    assert out.read_bytes() == PAYLOAD and len(server.ranges) == 3
    assert "HTTP 500" in (tmp_path / "log.txt").read_text()


def test_server_ignoring_range_restarts_cleanly(server: Server, tmp_path: Path) -> None:
    server.plan = ["drop", "norange"]
    out = tmp_path / "reviews.json.gz"
    assert _run(server.url, out) == 0
    assert out.read_bytes() == PAYLOAD


def test_gives_up_after_retries(server: Server, tmp_path: Path) -> None:
    server.plan = ["500"] * 10
    out = tmp_path / "reviews.json.gz"
    assert _run(server.url, out) == 1
    assert "giving up after 4 attempts" in (tmp_path / "log.txt").read_text()
    assert not out.exists()


def test_404_is_not_retried(server: Server, tmp_path: Path) -> None:
    server.plan = ["404"]
    assert _run(server.url, tmp_path / "x.json.gz") == 1
    assert len(server.ranges) == 1 and "HTTP 404" in (tmp_path / "log.txt").read_text()


def test_checksum_mismatch_fails(server: Server, tmp_path: Path) -> None:
    out = tmp_path / "reviews.json.gz"
    assert _run(server.url, out, "--sha256", "0" * 64) == 1
    assert "sha256 mismatch" in (tmp_path / "log.txt").read_text() and not out.exists()


def test_error_page_under_gz_name_is_refused(server: Server, tmp_path: Path) -> None:
    """Refused, and not kept as the start of a later download: a rerun once the server is fixed starts afresh."""
    server.body = b"<html>Service moved</html>"
    assert _run(server.url, tmp_path / "reviews.json.gz") == 1
    assert "not gzip data" in (tmp_path / "log.txt").read_text()
    assert not list(tmp_path.glob("reviews.json.gz.part*"))
    server.body = PAYLOAD
    assert _run(server.url, tmp_path / "reviews.json.gz") == 0
    assert (tmp_path / "reviews.json.gz").read_bytes() == PAYLOAD and server.ranges[-1] is None


def test_resume_after_the_file_changed_starts_over(server: Server, tmp_path: Path) -> None:
    """A killed download resumed after the server's file changed must not splice old bytes to new ones."""
    out = tmp_path / "reviews.json.gz"
    server.plan = ["drop"]
    killed = ["--url", server.url, "--out", str(out), "--retries", "0", "--log", str(tmp_path / "log.txt")]
    assert download.main(killed) == 1
    assert (tmp_path / "reviews.json.gz.part").stat().st_size > 0
    server.body = gzip.compress(bytes(range(255, -1, -1)) * 4000, compresslevel=0)
    assert _run(server.url, out) == 0
    assert out.read_bytes() == server.body and server.ranges[-1] is not None  # asked to resume, got the new file


def test_partial_answer_from_the_wrong_offset_starts_over(server: Server, tmp_path: Path) -> None:
    server.plan = ["drop", "badstart"]
    out = tmp_path / "reviews.json.gz"
    assert _run(server.url, out) == 0
    assert out.read_bytes() == PAYLOAD
    assert "starting over" in (tmp_path / "log.txt").read_text()


def test_malformed_url_is_a_clear_error(tmp_path: Path) -> None:
    assert _run("http://[bad/reviews.json.gz", tmp_path / "reviews.json.gz") == 1
    log = (tmp_path / "log.txt").read_text()
    assert "invalid URL" in log and "Traceback" not in log


def test_size_cap(server: Server, tmp_path: Path) -> None:
    assert _run(server.url, tmp_path / "reviews.json.gz", "--max-bytes", "1000") == 1
    assert "--max-bytes" in (tmp_path / "log.txt").read_text()


def test_local_path_is_copied(tmp_path: Path) -> None:
    source = tmp_path / "src.json"
    source.write_bytes(b'{"a": 1}\n')
    out = tmp_path / "raw" / "copy.json"
    assert _run(str(source), out) == 0 and out.read_bytes() == source.read_bytes()
    assert _run(source.as_uri(), tmp_path / "raw" / "copy2.json") == 0


def test_a_long_download_reports_bytes_rate_and_time_left() -> None:
    line = download._progress("http://x/big.gz", 30 * 2**20, 10 * 2**20, 110 * 2**20, 10.0)
    assert line == "http://x/big.gz: 30.0 MiB of 110.0 MiB at 2.00 MiB/s, about 40 s left"
    assert download._progress("http://x/big.gz", 3 * 2**20, 0, None, 2.0) == "http://x/big.gz: 3.0 MiB at 1.50 MiB/s"
