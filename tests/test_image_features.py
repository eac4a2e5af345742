"""Streaming the 2014 CNN feature file into per-item rows: order, gaps, duplicates and broken files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vlif_pipeline.data import image_features as imf
from vlif_pipeline.io import StageError, load_npy

DIM = 8


def _write_b(path: Path, records: list[tuple[bytes, np.ndarray]]) -> Path:
    with open(path, "wb") as fh:
        for asin, vec in records:
            fh.write(asin)
            fh.write(np.asarray(vec, dtype="<f4").tobytes())
    return path


def _vec(k: float, dim: int = DIM) -> np.ndarray:
    return np.arange(dim, dtype=np.float32) + k


def _write_items(path: Path, ids: list[str], order: list[int] | None = None) -> Path:
    idx = list(range(len(ids))) if order is None else order
    pq.write_table(pa.table({"i": pa.array(idx, pa.int64()), "item_id": ids, "title": ["t"] * len(ids)}), path)
    return path


def test_rows_follow_item_order_and_missing_get_the_mean(tmp_path: Path) -> None:
    b = _write_b(tmp_path / "f.b", [(b"B000000001", _vec(1)), (b"B000000002", _vec(2)),
                                    (b"B000000003", _vec(3)), (b"B000000009", _vec(9))])
    ids = ["B000000003", "B000000077", "B000000001"]
    feats, report = imf.stream_features(b, ids, dim=DIM, chunk_records=3)
    assert feats.dtype == np.float32 and feats.shape == (3, DIM)
    np.testing.assert_array_equal(feats[0], _vec(3))
    np.testing.assert_array_equal(feats[2], _vec(1))
    np.testing.assert_allclose(feats[1], _vec(2))
    assert (report.records_read, report.matched, report.missing) == (4, 2, 1)
    assert report.missing_examples == ["B000000077"]


def test_chunk_size_does_not_change_the_result(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    records = [(f"B{k:09d}".encode(), rng.random(DIM)) for k in range(37)]
    b = _write_b(tmp_path / "f.b", records)
    ids = [f"B{k:09d}" for k in range(0, 40, 3)]
    reference, _ = imf.stream_features(b, ids, dim=DIM, chunk_records=1000)
    for chunk in (1, 2, 5, 36):
        feats, report = imf.stream_features(b, ids, dim=DIM, chunk_records=chunk)
        np.testing.assert_array_equal(feats, reference)
        assert report.records_read == 37


def test_first_duplicate_wins_and_nonfinite_records_are_skipped(tmp_path: Path) -> None:
    bad = _vec(5)
    bad[2] = np.nan
    b = _write_b(tmp_path / "f.b", [(b"B000000001", _vec(1)), (b"B000000001", _vec(100)),
                                    (b"B000000005", bad), (b"B000000002", _vec(2)),
                                    (b"B000000003", bad), (b"B000000003", _vec(3))])
    ids = ["B000000001", "B000000005", "B000000002", "B000000003"]
    feats, report = imf.stream_features(b, ids, dim=DIM)
    np.testing.assert_array_equal(feats[0], _vec(1))
    np.testing.assert_allclose(feats[1], (_vec(1) + _vec(2) + _vec(3)) / 3)
    np.testing.assert_array_equal(feats[3], _vec(3))
    assert report.duplicate_records == 1 and report.duplicate_examples == ["B000000001"]
    assert report.nonfinite_records == 2 and report.missing == 1


def test_truncated_trailing_record_names_file_and_offset(tmp_path: Path) -> None:
    b = _write_b(tmp_path / "f.b", [(b"B000000001", _vec(1)), (b"B000000002", _vec(2))])
    b.write_bytes(b.read_bytes()[:-5])
    record = 10 + 4 * DIM
    with pytest.raises(StageError, match=rf"f\.b: truncated record at byte offset {record}\b"):
        imf.stream_features(b, ["B000000001"], dim=DIM, chunk_records=1)


def test_no_match_and_garbage_asins_are_errors(tmp_path: Path) -> None:
    b = _write_b(tmp_path / "f.b", [(b"B000000001", _vec(1))])
    with pytest.raises(StageError, match="none of the 1 items"):
        imf.stream_features(b, ["B000000099"], dim=DIM)
    garbage = _write_b(tmp_path / "g.b", [(b"B000000001", _vec(1)), (b"\xff" * 10, _vec(2))])
    with pytest.raises(StageError, match=rf"record 1 at byte offset {10 + 4 * DIM}.*not ASCII"):
        imf.stream_features(garbage, ["B000000001"], dim=DIM)
    empty = tmp_path / "empty.b"
    empty.write_bytes(b"")
    with pytest.raises(StageError, match="0 records read"):
        imf.stream_features(empty, ["B000000001"], dim=DIM)


def test_items_parquet_is_validated(tmp_path: Path) -> None:
    assert imf.read_item_ids(_write_items(tmp_path / "a.parquet", ["x", "y", "z"], [2, 0, 1])) == ["y", "z", "x"]
    with pytest.raises(StageError, match="not a permutation"):
        imf.read_item_ids(_write_items(tmp_path / "b.parquet", ["x", "y"], [0, 2]))
    pq.write_table(pa.table({"i": [0]}), tmp_path / "c.parquet")
    with pytest.raises(StageError, match=r"c.parquet: missing column\(s\) item_id \(has i\)"):
        imf.read_item_ids(tmp_path / "c.parquet")


def test_command_line_writes_npy_and_report(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    vecs = {f"B{k:09d}": rng.random(imf.FEATURE_DIM).astype(np.float32) for k in range(5)}
    b = _write_b(tmp_path / "image_features_X.b", [(a.encode(), v) for a, v in vecs.items()])
    items = _write_items(tmp_path / "items.parquet", ["B000000004", "B000000000", "B000000042"])
    out, report = tmp_path / "features" / "visual__original.npy", tmp_path / "report.json"
    argv = ["--features", str(b), "--items", str(items), "--out", str(out), "--report", str(report),
            "--log", str(tmp_path / "log.txt")]
    assert imf.main(argv) == 0
    feats = load_npy(out)
    assert feats.shape == (3, imf.FEATURE_DIM) and feats.dtype == np.float32
    np.testing.assert_array_equal(feats[0], vecs["B000000004"])
    summary = json.loads(report.read_text())
    assert (summary["records_read"], summary["matched"], summary["missing"]) == (5, 2, 1)
    assert summary["missing_examples"] == ["B000000042"]
    b.write_bytes(b.read_bytes()[:-1])
    assert imf.main(argv) == 1
    assert "truncated record" in (tmp_path / "log.txt").read_text()
