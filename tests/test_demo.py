"""The demo generator: raw 2014 formats, determinism, and structure a recommender can actually learn."""

from __future__ import annotations

import ast
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlif_pipeline.amazon import demo

TEXT_ATTRS = ["category", "material", "price_tier"]
VISUAL_WORDS = set(demo.COLOURS) | set(demo.SHAPES) | {
    "round", "circular", "square", "triangular", "star", "hexagonal", "rectangular", "oval", "colour",
    "color", "grey", "gray", "white", "brown", "violet", "navy", "gold", "silver",
}


def _read_dataset(d: Path) -> tuple[list[dict], list[dict], dict, np.ndarray]:
    with gzip.open(d / "reviews.json.gz", "rt", encoding="utf-8") as fh:
        reviews = [json.loads(line) for line in fh]
    with gzip.open(d / "meta.json.gz", "rt", encoding="utf-8") as fh:
        metas = [ast.literal_eval(line) for line in fh]
    truth = json.loads((d / "truth.json").read_text())
    raw = np.fromfile(d / "image_features.b", dtype=np.uint8)
    return reviews, metas, truth, raw


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default-size demo, generated once through the stage's command line."""
    out = tmp_path_factory.mktemp("demo")
    argv = ["--out-dir", str(out), "--seed", "42", "--n-users", "2000", "--n-items", "800", "--image-size", "64"]
    assert demo.main(argv) == 0
    return out


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    args = ["--seed", "7", "--n-users", "120", "--n-items", "60", "--image-size", "32"]
    assert demo.main(["--out-dir", str(tmp_path / "a"), *args]) == 0
    assert demo.main(["--out-dir", str(tmp_path / "b"), *args]) == 0
    assert demo.main(["--out-dir", str(tmp_path / "c"), *args[:1], "8", *args[2:]]) == 0
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) == 60 + 4
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "reviews.json.gz").read_bytes() != (tmp_path / "c" / "reviews.json.gz").read_bytes()


def test_formats_and_counts(full: Path) -> None:
    reviews, metas, truth, raw = _read_dataset(full)
    assert 25_000 <= len(reviews) <= 40_000
    users = {r["reviewerID"] for r in reviews}
    assert len(users) == 2000 and len(metas) == 800
    assert raw.size == 800 * (10 + 4 * 4096)
    review_keys = {"reviewerID", "asin", "reviewerName", "helpful", "reviewText", "overall", "summary",
                   "unixReviewTime", "reviewTime"}
    for r in reviews[:500]:
        assert set(r) == review_keys
        assert isinstance(r["overall"], float) and 1.0 <= r["overall"] <= 5.0
        assert 0 <= r["helpful"][0] <= r["helpful"][1]
        assert re.fullmatch(r"\d\d \d{1,2}, 20\d\d", r["reviewTime"])
    years = {int(r["reviewTime"][-4:]) for r in reviews}
    assert {2011, 2012, 2013, 2014} <= years
    assert len({(r["reviewerID"], r["asin"]) for r in reviews}) == len(reviews)
    asins = [m["asin"] for m in metas]
    assert all(re.fullmatch(r"B\d{9}", a) for a in asins) and len(set(asins)) == 800
    assert {r["asin"] for r in reviews} <= set(asins)
    assert any("brand" not in m for m in metas) and any("description" not in m for m in metas)
    assert any("price" not in m for m in metas)
    for m in metas:
        assert m["imUrl"] == f"images/{m['asin']}.png"
        assert isinstance(m["categories"], list) and isinstance(m["categories"][0], list)
    with Image.open(full / metas[0]["imUrl"]) as img:
        assert img.format == "PNG" and img.size == (64, 64)
    records = raw.reshape(800, -1)
    assert [bytes(rec[:10]).decode("ascii") for rec in records] == [it["asin"] for it in truth["items"]]
    feats = records[:, 10:].copy().view("<f4")
    assert np.isfinite(feats).all() and (feats >= 0).all()


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def test_visual_attributes_never_in_text_and_text_attributes_are(full: Path) -> None:
    reviews, metas, truth, _ = _read_dataset(full)
    items = {it["asin"]: it for it in truth["items"]}
    for m in metas:
        text = " ".join([m["title"], m.get("brand", ""), m.get("description", ""), str(m["categories"])])
        assert not _words(text) & VISUAL_WORDS, m
        it = items[m["asin"]]
        assert it["material"] in m["title"].lower() and it["category"] == m["categories"][0][1]
        if "price" in m:
            low, high = demo.PRICE_RANGES[it["price_tier"]]
            assert low <= m["price"] <= high
    for r in reviews:
        assert not _words(r["reviewText"] + " " + r["summary"]) & VISUAL_WORDS


def test_images_and_features_show_colour_and_shape(full: Path) -> None:
    _, _, truth, raw = _read_dataset(full)
    for it in truth["items"][:40]:
        with Image.open(full / "images" / f"{it['asin']}.png") as img:
            centre = np.asarray(img.convert("RGB"))[32, 32].astype(int)
        assert np.abs(centre - np.array(demo.COLOURS[it["colour"]])).max() <= 40, it
    feats = raw.reshape(800, -1)[:, 10:].copy().view("<f4").astype(np.float64)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    key = np.array([f"{it['colour']}/{it['shape']}" for it in truth["items"]])
    material = np.array([it["material"] for it in truth["items"]])
    sim = feats[:200] @ feats.T
    same_look = key[:200, None] == key[None, :]
    same_material = material[:200, None] == material[None, :]
    off_diag = ~np.eye(200, 800, dtype=bool)
    assert sim[same_look & off_diag].mean() > sim[~same_look].mean() + 0.2
    assert abs(sim[same_material & ~same_look].mean() - sim[~same_material & ~same_look].mean()) < 0.01


def test_users_concentrate_on_favoured_values(full: Path) -> None:
    reviews, _, truth, _ = _read_dataset(full)
    items = {it["asin"]: it for it in truth["items"]}
    favs = {u["reviewerID"]: u for u in truth["users"]}
    for attr, values in truth["attribute_values"].items():
        hits = np.mean([items[r["asin"]][attr] in favs[r["reviewerID"]][attr] for r in reviews])
        chance = np.mean([len(u[attr]) for u in truth["users"]]) / len(values)
        odds_ratio = (hits / (1 - hits)) / (chance / (1 - chance))
        assert odds_ratio > 2.0, (attr, hits, chance)


def _hit_rate(scores: np.ndarray, train: np.ndarray, held_out: np.ndarray, k: int = 20) -> float:
    scores = np.where(train > 0, -np.inf, scores)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return float((top == held_out[:, None]).any(axis=1).mean())


def test_attribute_preferences_beat_popularity_and_vision_adds_signal(full: Path) -> None:
    """Leave one item out per user: a profile over true attributes must beat popularity by far."""
    reviews, _, truth, _ = _read_dataset(full)
    asin_row = {it["asin"]: i for i, it in enumerate(truth["items"])}
    user_row = {u["reviewerID"]: k for k, u in enumerate(truth["users"])}
    train = np.zeros((len(user_row), len(asin_row)))
    held_out = np.full(len(user_row), -1)
    for r in reviews:
        u, i = user_row[r["reviewerID"]], asin_row[r["asin"]]
        if held_out[u] < 0:
            held_out[u] = i
        else:
            train[u, i] = 1.0

    def profile_scores(attrs: list[str]) -> np.ndarray:
        onehot = np.hstack([
            np.eye(len(truth["attribute_values"][a]))[[truth["attribute_values"][a].index(it[a])
                                                       for it in truth["items"]]]
            for a in attrs])
        profile = train @ onehot / train.sum(axis=1, keepdims=True)
        return np.log(profile + 0.05) @ onehot.T

    popularity = _hit_rate(np.tile(train.sum(axis=0), (len(user_row), 1)), train, held_out)
    text_only = _hit_rate(profile_scores(TEXT_ATTRS), train, held_out)
    both = _hit_rate(profile_scores(TEXT_ATTRS + ["colour", "shape"]), train, held_out)
    assert popularity < 0.15
    assert both > 2 * popularity
    assert both > text_only + 0.05


def test_most_interactions_survive_5_core(full: Path) -> None:
    reviews, _, _, _ = _read_dataset(full)
    users = np.unique([r["reviewerID"] for r in reviews], return_inverse=True)[1]
    items = np.unique([r["asin"] for r in reviews], return_inverse=True)[1]
    keep = np.ones(len(reviews), dtype=bool)
    while True:
        bad_u = np.bincount(users[keep], minlength=users.max() + 1) < 5
        bad_i = np.bincount(items[keep], minlength=items.max() + 1) < 5
        drop = keep & (bad_u[users] | bad_i[items])
        if not drop.any():
            break
        keep &= ~drop
    assert keep.mean() > 0.97


def test_bad_arguments_fail_cleanly(tmp_path: Path) -> None:
    assert demo.main(["--out-dir", str(tmp_path), "--seed", "1", "--n-items", "3"]) == 1
    assert demo.main(["--out-dir", str(tmp_path), "--seed", "1", "--feature-noise", "-1"]) == 1
    assert not any(tmp_path.iterdir())
