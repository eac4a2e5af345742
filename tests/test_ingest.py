"""ingest: the three release formats, text cleaning, bad input and the report."""

from __future__ import annotations

import gzip
import json
import re
import zlib
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from vlif_pipeline.amazon import ingest
from vlif_pipeline.amazon.formats import FORMATS
from vlif_pipeline.amazon.meta import parse_record
from vlif_pipeline.amazon.readers import read_reviews
from vlif_pipeline.amazon.text_clean import clean_text


def _review_2014(user: str, item: str, rating: float = 5.0, time: int = 1000) -> str:
    return json.dumps(
        {"reviewerID": user, "asin": item, "reviewerName": "x", "helpful": [0, 0], "reviewText": "ok",
         "overall": rating, "summary": "s", "unixReviewTime": time, "reviewTime": "01 1, 2014"}
    )


META_2014 = [
    {"asin": "I1", "title": "Soft &amp; Warm <b>Blanket</b>", "price": 12.5, "imUrl": "http://x/1.jpg",
     "related": {"also_bought": ["I2"]}, "salesRank": {"Baby": 3}, "brand": "Acme",
     "categories": [["Baby", "Nursery"], ["Baby", "Bedding"]], "description": "Line one\n\n  line   two"},
    {"asin": "I2", "title": 'Mom\'s "best" bottle', "categories": [["Baby"]], "imUrl": "http://x/2.jpg"},
    {"asin": "I9", "title": "never reviewed"},
]


def _write(path: Path, lines: list[str], gz: bool = True) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def _run(tmp_path: Path, fmt: str, reviews: Path, meta: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    out = tmp_path / "out"
    rc = ingest.main(
        ["--format", fmt, "--reviews", str(reviews), "--meta", str(meta),
         "--out-interactions", str(out / "interactions.parquet"), "--out-items", str(out / "items.parquet"),
         "--report", str(out / "report.json"), "--log", str(out / "log.txt"), *extra]
    )
    report = json.loads((out / "report.json").read_text()) if rc == 0 else {}
    return rc, report


def _meta(tmp_path: Path) -> Path:
    return _write(tmp_path / "m.gz", [repr(META_2014[0])])


def _log(tmp_path: Path) -> str:
    return (tmp_path / "out" / "log.txt").read_text()


@pytest.fixture
def dump_2014(tmp_path: Path) -> tuple[Path, Path]:
    reviews = [
        _review_2014("U1", "I1", 5, 300),
        _review_2014("U1", "I1", 1, 100),  # duplicate pair, earlier: kept
        _review_2014("U2", "I1", 4, 200),
        _review_2014("U2", "I2", 3, 200),
        _review_2014("U3", "I3", 2, 50),  # item without meta
    ]
    meta = [repr(m) for m in META_2014]
    return _write(tmp_path / "reviews.json.gz", reviews), _write(tmp_path / "meta.json.gz", meta)


def test_2014_python_literal_meta(tmp_path: Path, dump_2014: tuple[Path, Path]) -> None:
    rc, report = _run(tmp_path, "amazon2014", *dump_2014)
    assert rc == 0
    inter = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert inter.schema == {"user_id": pl.String, "item_id": pl.String, "rating": pl.Float32, "timestamp": pl.Int64}
    assert inter.height == 4
    u1_i1 = inter.filter((pl.col("user_id") == "U1") & (pl.col("item_id") == "I1"))
    assert u1_i1.get_column("rating").to_list() == [1.0]
    items = pl.read_parquet(tmp_path / "out" / "items.parquet")
    assert items.get_column("item_id").to_list() == ["I1", "I2", "I3"]
    i1, i2, i3 = items.to_dicts()
    assert i1["title"] == "Soft & Warm Blanket"
    assert i1["raw_title"] == "Soft &amp; Warm <b>Blanket</b>"
    assert i1["categories"] == "Baby, Nursery, Bedding"
    assert i1["description"] == "Line one line two"
    assert i1["price"] == 12.5 and i1["brand"] == "Acme" and i1["has_meta"]
    assert i2["title"] == 'Mom\'s "best" bottle' and i2["raw_title"] is None and i2["price"] is None
    assert not i3["has_meta"] and i3["title"] == "" and i3["image_url"] is None
    assert report["duplicates"]["dropped"] == 1
    assert report["items_without_meta"] == 1
    assert report["meta"]["skipped_unreviewed"] == 1
    assert "1 duplicate (user, item) pairs dropped" in _log(tmp_path)


def test_2014_plain_files_and_json_meta(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "r.json", [_review_2014("U1", "I1"), "", _review_2014("U2", "I1")], gz=False)
    meta = _write(tmp_path / "m.json", [json.dumps(META_2014[0])], gz=False)
    rc, report = _run(tmp_path, "amazon2014", reviews, meta)
    assert rc == 0
    assert report["reviews"]["blank_lines"] == 1 and report["reviews"]["records_parsed"] == 2
    assert report["items_without_meta"] == 0


def test_2023_format(tmp_path: Path) -> None:
    reviews = [
        json.dumps({"rating": 4.0, "title": "t", "text": "x", "images": [], "asin": "A1-red", "parent_asin": "P1",
                    "user_id": "U1", "timestamp": 1588687728923, "helpful_vote": 0, "verified_purchase": True}),
        json.dumps({"rating": 5, "asin": "A1-blue", "parent_asin": "P1", "user_id": "U2", "timestamp": 1588687729000}),
    ]
    meta = [json.dumps({
        "parent_asin": "P1", "title": "Tee", "main_category": "Fashion", "features": ["cotton"],
        "description": ["Soft", "tee"], "price": None, "store": "Brand&Co",
        "images": [{"thumb": "t.jpg", "large": "l.jpg", "hi_res": None, "variant": "MAIN"},
                   {"thumb": "t2.jpg", "large": "l2.jpg", "hi_res": "h2.jpg", "variant": "PT01"}],
        "categories": [], "details": {}})]
    rc, report = _run(
        tmp_path, "amazon2023", _write(tmp_path / "r.jsonl.gz", reviews), _write(tmp_path / "m.jsonl", meta, gz=False)
    )
    assert rc == 0
    inter = pl.read_parquet(tmp_path / "out" / "interactions.parquet")
    assert inter.get_column("timestamp").to_list() == [1588687728, 1588687729]
    assert inter.get_column("item_id").to_list() == ["P1", "P1"]
    (item,) = pl.read_parquet(tmp_path / "out" / "items.parquet").to_dicts()
    assert item["image_url"] == "h2.jpg"  # hi_res preferred over large
    assert item["categories"] == "Fashion" and item["brand"] == "Brand&Co" and item["description"] == "Soft tee"


def test_bad_lines_under_tolerance_are_counted(tmp_path: Path) -> None:
    good = [_review_2014(f"U{n}", "I1") for n in range(200)]
    lines = good[:50] + ["{not json"] + good[50:120] + ['{"reviewerID": "U", "asin": "I1"}'] + good[120:]
    rc, report = _run(tmp_path, "amazon2014", _write(tmp_path / "r.gz", lines), _meta(tmp_path), "--max-bad-fraction", "0.02")
    assert rc == 0
    bad = report["reviews"]["bad_examples"]
    assert report["reviews"]["bad_lines"] == 2
    assert [b["line"] for b in bad] == [51, 122]
    assert "not JSON" in bad[0]["reason"] and "'overall'" in bad[1]["reason"]


def test_bad_lines_over_tolerance_fail_with_line_numbers(tmp_path: Path) -> None:
    lines = [_review_2014("U1", "I1"), "garbage", _review_2014("U2", "I1"), '["a list"]']
    rc, _ = _run(tmp_path, "amazon2014", _write(tmp_path / "r.gz", lines), _meta(tmp_path))
    assert rc == 1
    log = _log(tmp_path)
    assert "r.gz: 2 of 4 lines are bad" in log and "line 2: not JSON" in log and "line 4: a JSON list" in log


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty file"),
        (gzip.compress(b'{"reviewerID": "U1", "asin": "I1", "overall": 5, "unixReviewTime": 1}\n' * 5000)[:-40],
         "corrupt or truncated gzip"),
        (b"user,item,rating\nU1,I1,5\n", "none of 2 lines is a valid record"),
        (b'{"reviewerID": "U1", "asin": "I\xff\xfe", "overall": 5, "unixReviewTime": 1}\n', "not valid UTF-8"),
        (b"\x00\x01binary\x02" * 30, "none of"),
    ],
    ids=["empty", "truncated-gzip", "csv", "latin1", "binary"],
)
def test_broken_review_files_give_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    reviews = tmp_path / "reviews.json"
    reviews.write_bytes(content)
    rc, _ = _run(tmp_path, "amazon2014", reviews, _meta(tmp_path))
    assert rc == 1
    log = _log(tmp_path)
    assert message in log and str(reviews) in log
    assert "Traceback" not in log


def test_truncated_gzip_names_the_last_line_it_decompressed(tmp_path: Path) -> None:
    lines = [_review_2014(f"U{n}", "I1", time=n) for n in range(20000)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    reviews = tmp_path / "reviews.json.gz"
    reviews.write_bytes(data[: len(data) // 2])
    readable = zlib.decompressobj(wbits=31).decompress(data[: len(data) // 2]).count(b"\n")
    rc, _ = _run(tmp_path, "amazon2014", reviews, _meta(tmp_path))
    assert rc == 1
    last_good = int(re.search(r"truncated gzip after line (\d+)", _log(tmp_path)).group(1))
    assert readable - 1000 < last_good <= readable  # within one 64 KiB read of the true end


@pytest.mark.parametrize("neighbour", ["", "not json"], ids=["clean-block", "block-with-a-bad-line"])
def test_ids_that_are_not_strings_or_integers_are_rejected(tmp_path: Path, neighbour: str) -> None:
    """Polars would read true, 1.5, [..] and {..} as the strings "true", "1.5", ...: the same lines
    must be rejected whether or not a bad neighbour sends the block down the line-by-line path."""
    odd = ['true', '1.5', '["B", "C"]', '{"x": 1}']
    lines = [_review_2014(f"U{n}", "I1", time=n) for n in range(50)]
    lines += [_review_2014("U0", "I1").replace('"U0"', value) for value in odd]
    lines += [_review_2014("U0", "I1").replace('"U0"', "7.0"), _review_2014("U0", "I1").replace('"I1"', "12")]
    lines += [_review_2014("U9", "I1", time=10**20)]  # beyond int64
    lines += [neighbour] if neighbour else []
    reviews, stats = read_reviews(_write(tmp_path / "r.json", lines, gz=False), FORMATS["amazon2014"])
    bad = {example["line"]: example["reason"] for example in stats.bad_examples}
    assert [line for line in bad if line <= 57] == [51, 52, 53, 54, 57]
    assert "'reviewerID'" in bad[51] and "'unixReviewTime'" in bad[57]
    assert reviews.filter(pl.col("line") >= 51).select("user_id", "item_id").rows() == [("7", "I1"), ("U0", "12")]


def test_gz_suffix_without_gzip_data(tmp_path: Path) -> None:
    reviews = _write(tmp_path / "r.json.gz", [_review_2014("U1", "I1")], gz=False)
    rc, _ = _run(tmp_path, "amazon2014", reviews, _meta(tmp_path))
    assert rc == 1 and "not gzip data" in _log(tmp_path)


def test_meta_of_another_category(tmp_path: Path) -> None:
    rc, _ = _run(tmp_path, "amazon2014", _write(tmp_path / "r.gz", [_review_2014("U1", "I1")]),
                 _write(tmp_path / "m.gz", [repr({"asin": "Z1", "title": "t"})]))
    assert rc == 1 and "none of its 1 records is for a reviewed item" in _log(tmp_path)


@pytest.mark.parametrize(
    "value",
    [
        {"a": "it's", "b": 'say "hi"', "c": "back\\slash", "d": [1, 2.5, None, True, False], "e": {"x": "\u00e9\n"}},
        {"title": "None True False", "n": -3, "f": 1e-05},
        {"k": ("tuple", 1)},
    ],
)
def test_python_literal_parser_matches_literal_eval(value: dict[str, Any]) -> None:
    import ast

    text = repr(value)
    assert parse_record(text) == ast.literal_eval(text)


def test_python_literal_parser_never_executes_code() -> None:
    with pytest.raises((ValueError, SyntaxError)):
        parse_record("{'a': __import__('os').getcwd()}")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ('<span class="a-size-medium a-color-secondary"', ""),
        (' Magazines" />', ""),
        ("Tom &amp; Jerry<br/>DVD", "Tom & Jerry DVD"),
        ("&amp;lt;b&amp;gt;bold&amp;lt;/b&amp;gt;", "bold"),
        ("<script>var x = 1;</script>Title", "Title"),
        ("  many\t\n spaces\u00a0here ", "many spaces here"),
        ("Size 5 < 6 but fine", "Size 5 < 6 but fine"),
        ("for ages <3 or >5 years", "for ages <3 or >5 years"),
        ('Fits 12" > 10" tablets', 'Fits 12" > 10" tablets'),
        ('Cover" >fits <b>all</b>', 'Cover" >fits all'),
        ('<img alt="x">Bib', "Bib"),
        ("<!-- note -->Cup<?php x ?>", "Cup"),
    ],
)
def test_clean_text(raw: str, clean: str) -> None:
    assert clean_text(raw) == clean


def test_block_cutting_finds_the_same_bad_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small blocks with bad lines: cutting blocks must report exactly the lines a line-by-line read does."""
    from vlif_pipeline.amazon import readers
    from vlif_pipeline.amazon.formats import FORMATS

    lines = [_review_2014(f"U{n}", f"I{n % 7}", time=n) for n in range(3000)]
    bad_at = [17, 18, 1500, 2999]
    for k in bad_at:
        lines[k] = '{"reviewerID": "broken'
    path = _write(tmp_path / "r.json.gz", lines)
    monkeypatch.setattr(readers, "SLOW_PATH_BYTES", 1 << 10)
    reviews, stats = readers.read_reviews(path, FORMATS["amazon2014"], block_bytes=64 << 10)
    assert [e["line"] for e in stats.bad_examples] == [k + 1 for k in bad_at]
    assert stats.lines_read == 3000 and stats.records_parsed == reviews.height == 2996
    assert reviews.get_column("line").to_list() == [n + 1 for n in range(3000) if n not in bad_at]


def test_meta_worker_processes_match_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vlif_pipeline.amazon import meta
    from vlif_pipeline.amazon.formats import FORMATS

    records = [dict(META_2014[n % 2], asin=f"I{n}") for n in range(400)] + [dict(META_2014[0], asin="I4")]
    lines = [repr(r) for r in records]
    lines[10] = "{'asin': 'I10', broken"
    path = _write(tmp_path / "m.json.gz", lines)
    wanted = {f"I{n}" for n in range(0, 400, 2)}
    inline_rows, inline_stats = meta.read_meta(path, FORMATS["amazon2014"], wanted, workers=1)
    monkeypatch.setattr(meta, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(meta, "CHUNK_BYTES", 4 << 10)
    pool_rows, pool_stats = meta.read_meta(path, FORMATS["amazon2014"], wanted, workers=2)
    assert pool_rows == inline_rows and len(pool_rows) == 199
    assert pool_stats == inline_stats
    assert pool_stats.duplicate_ids == 1 and pool_stats.skipped_unreviewed == 200
    assert [e["line"] for e in pool_stats.bad_examples] == [11]


@pytest.mark.parametrize(
    ("raw", "price"),
    [(12.5, 12.5), (3, 3.0), ("$1,299.99", 1299.99), ("$5.00 - $9.99", 5.0), (".a-box-inner{color:#fff}", None),
     ("", None), (None, None), (True, None), (float("nan"), None), (-2.0, None)],
)
def test_parse_price(raw: Any, price: float | None) -> None:
    from vlif_pipeline.amazon.formats import parse_price

    assert parse_price(raw) == price


def test_2018_image_fields_in_order_of_preference() -> None:
    from vlif_pipeline.amazon.formats import FORMATS, full_size_image_url

    to_item = FORMATS["amazon2018"].to_item
    thumb = "https://images-na.ssl-images-amazon.com/images/I/51Iph04Jy3L._SX38_SY50_CR,0,0,38,50_.jpg"
    assert to_item({"image": [thumb]}).image_url == thumb
    assert to_item({"imageURL": ["a.jpg"], "image": [thumb]}).image_url == "a.jpg"
    assert to_item({"imageURLHighRes": ["", "h.jpg"], "imageURL": ["a.jpg"]}).image_url == "h.jpg"
    assert to_item({"imageURLHighRes": [], "imageURL": []}).image_url is None
    assert full_size_image_url(thumb) == "https://images-na.ssl-images-amazon.com/images/I/51Iph04Jy3L.jpg"
    assert full_size_image_url("http://example.org/a._SX38_.jpg") == "http://example.org/a._SX38_.jpg"


def test_meta_in_another_releases_layout_is_refused(tmp_path: Path, dump_2014: tuple[Path, Path]) -> None:
    """2014 meta (Python literals, imUrl, categories) declared as 2018: refused, naming file, line and fix.

    Before, it ingested 'fine' with every image URL and category dropped."""
    rc, _ = _run(tmp_path, "amazon2018", *dump_2014)
    assert rc == 1
    message = _log(tmp_path)
    assert f"{dump_2014[1]}: line 1 and 1 more records are in the amazon2014 meta layout" in message
    assert "Set the dataset's format to amazon2014" in message


def test_a_field_empty_for_most_items_is_a_warning(tmp_path: Path, dump_2014: tuple[Path, Path]) -> None:
    meta = _write(tmp_path / "few_urls.json.gz", [repr({**m, "imUrl": ""}) for m in META_2014])
    rc, report = _run(tmp_path, "amazon2014", dump_2014[0], meta)
    assert rc == 0
    (warning,) = report["warnings"]
    assert "image_url is empty for 2 of 2 items with meta (100%)" in warning
    assert "WARNING" in _log(tmp_path) and "image_url is empty" in _log(tmp_path)
    rc, report = _run(tmp_path, "amazon2014", *dump_2014)
    assert rc == 0 and report["warnings"] == [] and report["meta"]["layouts"]["amazon2014"] == [2, 1]
