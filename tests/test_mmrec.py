"""MMRec interop: export a kcore folder, import it back (mmrec-import), nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from vlif_pipeline.data import kcore, mmrec
from vlif_pipeline.io import load_npy, save_npy


def _make_kcore(tmp_path: Path, user_id: str = "U{:02d}", item_id: str = "B{:03d}") -> Path:
    """A kcore folder of a random 25 x 14 dataset whose ids follow the given formats."""
    rng = np.random.default_rng(0)
    rows = [(user_id.format(u), item_id.format(j), float(rng.integers(1, 6)), int(rng.integers(10**9, 2 * 10**9)))
            for u in range(25) for j in range(14) if rng.random() < 0.7]
    inter = pl.DataFrame(rows, schema={"user_id": pl.String, "item_id": pl.String, "rating": pl.Float32,
                                       "timestamp": pl.Int64}, orient="row")
    ids = sorted(inter.get_column("item_id").unique().to_list())
    items = pl.DataFrame({"item_id": ids, "title": [f"title {x}" for x in ids], "has_meta": [True] * len(ids)})
    inter.write_parquet(tmp_path / "interactions.parquet")
    items.write_parquet(tmp_path / "items.parquet")
    assert kcore.main(["--interactions", str(tmp_path / "interactions.parquet"), "--items",
                       str(tmp_path / "items.parquet"), "--out-dir", str(tmp_path / "kcore")]) == 0
    return tmp_path / "kcore"


@pytest.fixture
def kcore_dir(tmp_path: Path) -> Path:
    return _make_kcore(tmp_path)


def test_round_trip(tmp_path: Path, kcore_dir: Path) -> None:
    n_items = pl.read_parquet(kcore_dir / "items.parquet").height
    text = np.random.default_rng(1).standard_normal((n_items, 384)).astype(np.float32)
    save_npy(tmp_path / "text.npy", text)
    export = tmp_path / "mmrec"
    assert mmrec.main(["--kcore-dir", str(kcore_dir), "--text-feat", str(tmp_path / "text.npy"),
                       "--name", "toy", "--out-dir", str(export)]) == 0
    header = (export / "toy.inter").read_text().splitlines()[0]
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    assert (export / "i_id_mapping.csv").read_text().splitlines()[:2] == ["asin\titemID", "B000\t0"]
    assert np.array_equal(load_npy(export / "text_feat.npy"), text)
    assert not (export / "image_feat.npy").exists()

    back = tmp_path / "back"
    assert mmrec.import_main(["--inter", str(export / "toy.inter"), "--items", str(tmp_path / "items.parquet"),
                              "--out-dir", str(back)]) == 0
    for name in ("interactions", "users"):
        assert pl.read_parquet(back / f"{name}.parquet").equals(pl.read_parquet(kcore_dir / f"{name}.parquet")), name
    items = pl.read_parquet(back / "items.parquet")
    assert items.equals(pl.read_parquet(kcore_dir / "items.parquet"))
    before = json.loads((kcore_dir / "stats.json").read_text())
    after = json.loads((back / "stats.json").read_text())
    for key in ("n_users", "n_items", "n_interactions", "splits", "density"):
        assert after[key] == before[key], key


def test_round_trip_keeps_leading_zeros_of_all_digit_ids(tmp_path: Path) -> None:
    """Book ASINs such as 0000013714 are all digits: the mapping files must not read them as numbers."""
    kcore_dir = _make_kcore(tmp_path, user_id="{:05d}", item_id="{:010d}")
    export, back = tmp_path / "mmrec", tmp_path / "back"
    assert mmrec.main(["--kcore-dir", str(kcore_dir), "--name", "books", "--out-dir", str(export)]) == 0
    assert mmrec.import_main(["--inter", str(export / "books.inter"), "--items", str(tmp_path / "items.parquet"),
                              "--out-dir", str(back)]) == 0
    for name in ("interactions", "users", "items"):
        assert pl.read_parquet(back / f"{name}.parquet").equals(pl.read_parquet(kcore_dir / f"{name}.parquet")), name


def test_import_without_mappings_or_meta(tmp_path: Path) -> None:
    folder = tmp_path / "baby"
    folder.mkdir()
    (folder / "baby.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n0\t1\t5\t100\t0\n1\t0\t4\t90\t2\n")
    report = tmp_path / "report.json"
    assert mmrec.import_main(["--inter", str(folder / "baby.inter"), "--out-dir", str(tmp_path / "k"),
                              "--report", str(report)]) == 0
    assert json.loads(report.read_text())["items_without_meta"] == 2
    items = pl.read_parquet(tmp_path / "k" / "items.parquet")
    assert items.get_column("item_id").to_list() == ["0", "1"]
    assert items.get_column("title").to_list() == ["", ""] and not items.get_column("has_meta").any()
    assert items.get_column("image_url").is_null().all()
    assert pl.read_parquet(tmp_path / "k" / "interactions.parquet").get_column("split").to_list() == [0, 2]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("userID\titemID\trating\ttimestamp\tx_label\n0\t1\t5\t100\t7\n", "x_label 7"),
        ("user\titem\n0\t1\n", "missing column(s) userID, itemID, x_label"),
        ("userID\titemID\tx_label\nA\t1\t0\n", "column userID must hold integers"),
    ],
)
def test_bad_mmrec_folders(tmp_path: Path, content: str, message: str) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text(content)
    assert mmrec.import_main(["--inter", str(folder / "bad.inter"), "--out-dir", str(tmp_path / "k"),
                              "--log", str(tmp_path / "log.txt")]) == 1
    assert message in (tmp_path / "log.txt").read_text()


def test_export_checks_feature_rows(tmp_path: Path, kcore_dir: Path) -> None:
    save_npy(tmp_path / "img.npy", np.zeros((3, 8), np.float32))
    assert mmrec.main(["--kcore-dir", str(kcore_dir), "--image-feat", str(tmp_path / "img.npy"), "--name", "toy",
                       "--out-dir", str(tmp_path / "m"), "--log", str(tmp_path / "log.txt")]) == 1
    assert "expected shape (" in (tmp_path / "log.txt").read_text()


@pytest.mark.parametrize(
    ("features", "stats", "message"),
    [
        (np.array([[0.0, 1.0], [np.nan, 1.0]], np.float32), {"n_items": 2},
         "item 1 has a non-finite feature value (1 such items)"),
        (np.zeros((2, 2), np.float32), None, "stats.json: cannot read n_items"),
        (np.zeros((3, 2), np.float32), {"n_items": 2}, "expected shape (2, dim), got (3, 2)"),
    ],
)
def test_features_copy_rejects_bad_input(
    tmp_path: Path, features: np.ndarray, stats: dict | None, message: str
) -> None:
    np.save(tmp_path / "text_feat.npy", features)
    if stats is not None:
        (tmp_path / "stats.json").write_text(json.dumps(stats))
    log = tmp_path / "log.txt"
    argv = ["--source", str(tmp_path / "text_feat.npy"), "--stats", str(tmp_path / "stats.json"),
            "--out", str(tmp_path / "text.npy"), "--log", str(log)]
    assert mmrec.features_main(argv) == 1
    assert message in log.read_text() and "Traceback" not in log.read_text()
    assert not (tmp_path / "text.npy").exists()
