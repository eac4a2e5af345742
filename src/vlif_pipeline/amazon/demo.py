"""Synthetic demo catalogue in the raw Amazon 2014 format, with structure a recommender can learn.

Why: the pipeline must run end to end offline, and the demo must be a *fair* test of VLIF: content
must beat pure ids, and the image must carry signal that the text does not.

Model (all draws from one ``numpy`` Generator seeded by ``--seed``, so a seed gives identical bytes):

* **Items** have five independent, uniformly drawn latent attributes: ``category`` (6 values),
  ``material`` (6) and ``price_tier`` (4) show only in the text (title, brand, categories,
  description, price); ``colour`` (8) and ``shape`` (6) show only in the image (the rendered PNG and
  the 4096-d features). Titles vary over five templates built from a category noun, a material
  phrase, a price-tier adjective and a brand (five brands per category); the description repeats
  tier and material, and the price lies in the tier's range. Some items lack brand, description or
  price, as in real dumps. No colour or shape word is ever written into any text field (nor into
  reviews). Each item also has a log-popularity ``N(0, popularity_sigma^2)``, which gives a moderate long tail.
* **Users** favour one or two values of every attribute (``pref[u, a, v]`` is 1 for a favoured value,
  else 0) and have an activity level: ``5 + NegBin`` interactions, mean ``--mean-interactions``,
  capped at a quarter of the catalogue, so every user survives 5-core.
* **Interactions**: user ``u`` draws items without replacement from
  ``softmax(sum_a w_a * pref[u, a, item_a] + popularity_i)`` (Gumbel top-k). The text weights
  (category, material, price tier) and the visual weights (colour, shape) have equal totals, so the
  visual modality matters as much as the text. Preferences over attributes generalise across items,
  so content models can rank long-tail items that ids alone cannot. Ratings grow with the affinity;
  timestamps are uniform over 2011-01-01 .. 2014-07-01.
* **Image features** (``image_features.b``): ``relu(P @ [onehot(colour), onehot(shape)] + noise)``
  with a fixed Gaussian projection ``P`` (4096 x 14), mimicking non-negative CNN ReLU features that
  encode what the picture shows and nothing else.

``truth.json`` records every item's attributes, every user's favoured values and the parameters.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vlif_pipeline.io import StageError, atomic_path, run_stage, setup_logging, write_json

FEATURE_DIM = 4096

CATEGORIES = ["Mugs", "Blankets", "Backpacks", "Lamps", "Planters", "Notebooks"]
CATEGORY_NOUNS = {
    "Mugs": ["Mug", "Coffee Mug", "Tea Cup", "Travel Mug"],
    "Blankets": ["Blanket", "Throw Blanket", "Bed Throw", "Picnic Blanket"],
    "Backpacks": ["Backpack", "Daypack", "Rucksack", "School Bag"],
    "Lamps": ["Lamp", "Desk Lamp", "Table Lamp", "Reading Light"],
    "Planters": ["Planter", "Flower Pot", "Plant Pot", "Herb Planter"],
    "Notebooks": ["Notebook", "Journal", "Sketchbook", "Diary"],
}
MATERIALS = ["cotton", "wool", "bamboo", "ceramic", "steel", "leather"]
MATERIAL_PHRASES = {
    "cotton": ["cotton", "organic cotton", "soft cotton"],
    "wool": ["wool", "merino wool", "felted wool"],
    "bamboo": ["bamboo", "natural bamboo", "sustainable bamboo"],
    "ceramic": ["ceramic", "glazed ceramic", "stoneware ceramic"],
    "steel": ["steel", "stainless steel", "brushed steel"],
    "leather": ["leather", "genuine leather", "vegan leather"],
}
PRICE_TIERS = ["budget", "standard", "premium", "luxury"]
PRICE_RANGES = {"budget": (4.0, 14.0), "standard": (15.0, 39.0), "premium": (40.0, 99.0), "luxury": (100.0, 280.0)}
TIER_PHRASES = {
    "budget": ["An affordable", "A budget-friendly", "A low-cost"],
    "standard": ["A dependable", "A well-made", "A practical"],
    "premium": ["A premium", "A high-end", "A superior"],
    "luxury": ["A luxury", "An exclusive", "A designer"],
}
COLOURS = {
    "red": (214, 39, 40),
    "orange": (255, 127, 14),
    "yellow": (240, 210, 30),
    "green": (44, 160, 44),
    "blue": (31, 119, 220),
    "purple": (148, 103, 189),
    "pink": (240, 120, 190),
    "black": (30, 30, 30),
}
SHAPES = ["circle", "square", "triangle", "star", "hexagon", "diamond"]
BRANDS = [
    "Northfield", "Havenly", "Kestrel", "Brightwell", "Oakmont", "Larkspur", "Tidewell", "Fernby",
    "Hollins", "Quillon", "Marlow", "Easton", "Corvid", "Pellham", "Alder", "Wrenfield", "Sable Co",
    "Thistle", "Norrland", "Vantor", "Bexley", "Calder", "Dunmore", "Evergood",
]
TIER_ADJECTIVES = {
    "budget": ["Basic", "Value", "Economy", "Simple"],
    "standard": ["Classic", "Everyday", "Practical", "Reliable"],
    "premium": ["Premium", "Deluxe", "Professional", "Superior"],
    "luxury": ["Luxury", "Designer", "Artisan", "Signature"],
}
STYLE_ADJECTIVES = ["Modern", "Compact", "Handmade", "Portable", "Sturdy", "Minimalist", "Vintage",
                    "Lightweight", "Durable", "Elegant", "Rustic"]
BENEFITS = [
    "Built to last through daily use.",
    "Makes a thoughtful gift for friends and family.",
    "Easy to clean and simple to care for.",
    "Designed for home, office and travel.",
    "Backed by our satisfaction guarantee.",
    "Crafted with attention to every detail.",
]
FIRST_NAMES = [
    "Alex", "Sam", "Jordan", "Taylor", "Chris", "Pat", "Morgan", "Jamie", "Robin", "Casey", "Drew",
    "Lee", "Kim", "Max", "Dana", "Jo", "Terry", "Avery", "Riley", "Quinn",
]
REVIEW_OPENERS = {
    1: ["Very disappointed with this {noun}.", "Would not buy this {noun} again."],
    2: ["This {noun} did not meet my expectations.", "Not great, the {noun} feels cheap."],
    3: ["An okay {noun} for the price.", "This {noun} is fine, nothing special."],
    4: ["Really nice {noun}, happy with it.", "Good {noun}, does what I needed."],
    5: ["I love this {noun}!", "Excellent {noun}, highly recommended."],
}
REVIEW_DETAILS = [
    "The {material} feels {quality}.",
    "Arrived quickly and well packed.",
    "I use it every day.",
    "Bought it as a gift.",
    "Would recommend to a friend.",
    "Exactly as described.",
]
SUMMARIES = {1: ["Disappointing", "Poor"], 2: ["Meh", "Not for me"], 3: ["Okay", "Average"],
             4: ["Good buy", "Nice"], 5: ["Love it", "Great product"]}
ATTRIBUTES = ["category", "material", "price_tier", "colour", "shape"]
ATTRIBUTE_VALUES = {"category": CATEGORIES, "material": MATERIALS, "price_tier": PRICE_TIERS,
                    "colour": list(COLOURS), "shape": SHAPES}
TIME_START = int(dt.datetime(2011, 1, 1, tzinfo=dt.UTC).timestamp())
TIME_END = int(dt.datetime(2014, 7, 1, tzinfo=dt.UTC).timestamp())


@dataclass(frozen=True)
class DemoParams:
    """Every knob of the generator; all of it lands in ``truth.json``."""

    seed: int
    n_users: int = 2000
    n_items: int = 800
    image_size: int = 64
    mean_interactions: float = 16.0
    attribute_weights: dict[str, float] = field(default_factory=lambda: {
        "category": 1.6, "material": 1.6, "price_tier": 1.3, "colour": 2.25, "shape": 2.25})
    popularity_sigma: float = 0.9
    feature_noise: float = 1.0
    missing_brand: float = 0.1
    missing_description: float = 0.15
    missing_price: float = 0.1


@dataclass
class Catalogue:
    """Latent state of the generated world: attribute indices per item, preferences per user."""

    asins: list[str]
    attrs: dict[str, np.ndarray]          # name -> (n_items,) int value index
    log_popularity: np.ndarray            # (n_items,)
    user_ids: list[str]
    user_names: list[str]
    prefs: dict[str, np.ndarray]          # name -> (n_users, n_values) 0/1 favoured values


def make_catalogue(params: DemoParams, rng: np.random.Generator) -> Catalogue:
    """Draw item attributes, item popularity and user preferences."""
    asins = [f"B{n:09d}" for n in rng.permutation(np.arange(1, params.n_items * 50))[: params.n_items]]
    attrs = {a: rng.integers(0, len(ATTRIBUTE_VALUES[a]), params.n_items) for a in ATTRIBUTES}
    log_popularity = rng.normal(0.0, params.popularity_sigma, params.n_items)
    alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    user_ids = [f"A{u:05d}" + "".join(rng.choice(alphabet, 8)) for u in range(params.n_users)]
    user_names = [f"{rng.choice(FIRST_NAMES)} {chr(65 + int(rng.integers(26)))}." for _ in range(params.n_users)]
    prefs: dict[str, np.ndarray] = {}
    for a in ATTRIBUTES:
        n_values = len(ATTRIBUTE_VALUES[a])
        pref = np.zeros((params.n_users, n_values))
        n_fav = rng.integers(1, 3, params.n_users)
        for u in range(params.n_users):
            pref[u, rng.choice(n_values, n_fav[u], replace=False)] = 1.0
        prefs[a] = pref
    return Catalogue(asins, attrs, log_popularity, user_ids, user_names, prefs)


def affinity(cat: Catalogue, params: DemoParams, users: np.ndarray) -> np.ndarray:
    """(len(users), n_items) preference score: weighted count of favoured attribute values."""
    score = np.zeros((len(users), len(cat.asins)))
    for a in ATTRIBUTES:
        score += params.attribute_weights[a] * cat.prefs[a][users][:, cat.attrs[a]]
    return score


def sample_interactions(cat: Catalogue, params: DemoParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per user, Gumbel-top-k over affinity + popularity; blocks of users keep memory bounded."""
    cap = max(5, params.n_items // 4)
    extra = max(params.mean_interactions - 5.0, 0.1)
    p = 1.0 / (1.0 + extra / 1.5)  # negative binomial with shape 1.5 and mean ``extra``
    counts = np.minimum(5 + rng.negative_binomial(1.5, p, params.n_users), cap)
    users, items, affs = [], [], []
    block = 256
    for start in range(0, params.n_users, block):
        ub = np.arange(start, min(start + block, params.n_users))
        aff = affinity(cat, params, ub)
        noisy = aff + cat.log_popularity[None, :] + rng.gumbel(size=aff.shape)
        order = np.argsort(-noisy, axis=1, kind="stable")
        for row, u in enumerate(ub):
            chosen = order[row, : counts[u]]
            users.append(np.full(len(chosen), u))
            items.append(chosen)
            affs.append(aff[row, chosen])
    user = np.concatenate(users)
    item = np.concatenate(items)
    aff_all = np.concatenate(affs)
    max_aff = sum(params.attribute_weights.values())
    rating = np.clip(np.rint(1.5 + 4.0 * aff_all / max_aff + rng.normal(0, 0.8, len(user))), 1, 5)
    timestamp = rng.integers(TIME_START, TIME_END, len(user))
    return {"user": user, "item": item, "rating": rating.astype(np.int64), "timestamp": timestamp}


def item_meta(cat: Catalogue, params: DemoParams, rng: np.random.Generator) -> list[dict]:
    """2014-style meta dicts; text shows category, material and price tier, never colour or shape."""
    brands_by_cat = {c: list(rng.choice(BRANDS, 5, replace=False)) for c in CATEGORIES}
    n = len(cat.asins)
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(-cat.log_popularity)] = np.arange(1, n + 1) * 37
    metas = []
    for i, asin in enumerate(cat.asins):
        category = CATEGORIES[cat.attrs["category"][i]]
        material = MATERIALS[cat.attrs["material"][i]]
        tier = PRICE_TIERS[cat.attrs["price_tier"][i]]
        noun = str(rng.choice(CATEGORY_NOUNS[category]))
        mat = str(rng.choice(MATERIAL_PHRASES[material]))
        brand = str(rng.choice(brands_by_cat[category]))
        adj = str(rng.choice(TIER_ADJECTIVES[tier]))
        style = str(rng.choice(STYLE_ADJECTIVES))
        templates = [
            f"{brand} {adj} {mat.title()} {noun}",
            f"{adj} {mat.title()} {noun} by {brand}",
            f"{noun} - {mat.title()}, {adj} {style}",
            f"{brand} {style} {noun} Made of {mat.title()}",
            f"{style} {mat.title()} {noun} ({adj} Edition)",
        ]
        title = templates[int(rng.integers(len(templates)))]
        others = [j for j in rng.choice(n, 12, replace=False) if j != i]
        meta: dict = {
            "asin": asin,
            "title": title,
            "imUrl": f"images/{asin}.png",
            "related": {"also_bought": [cat.asins[j] for j in others[:6]],
                        "also_viewed": [cat.asins[j] for j in others[6:]]},
            "salesRank": {"Home & Kitchen": int(ranks[i])},
            "categories": [["Home & Kitchen", category, f"{mat.split()[-1].title()} {category}"]],
        }
        if rng.random() >= params.missing_price:
            low, high = PRICE_RANGES[tier]
            meta["price"] = round(float(rng.uniform(low, high)), 2)
        if rng.random() >= params.missing_brand:
            meta["brand"] = brand
        if rng.random() >= params.missing_description:
            opener = str(rng.choice(TIER_PHRASES[tier]))
            benefit = str(rng.choice(BENEFITS))
            meta["description"] = f"{opener} {noun.lower()} made from {mat}. {benefit}"
        metas.append(meta)
    return metas


def review_records(cat: Catalogue, inter: dict[str, np.ndarray], rng: np.random.Generator) -> list[dict]:
    """2014-style review dicts, in (user, draw) order; texts mention no colour or shape."""
    records = []
    qualities = {1: "flimsy", 2: "thin", 3: "okay", 4: "solid", 5: "wonderful"}
    for u, i, r, t in zip(inter["user"], inter["item"], inter["rating"], inter["timestamp"], strict=True):
        r = int(r)
        noun = CATEGORY_NOUNS[CATEGORIES[cat.attrs["category"][i]]][0].lower()
        material = MATERIALS[cat.attrs["material"][i]]
        detail = str(rng.choice(REVIEW_DETAILS)).format(material=material, quality=qualities[r])
        text = str(rng.choice(REVIEW_OPENERS[r])).format(noun=noun) + " " + detail
        total = int(rng.integers(0, 6))
        day = dt.datetime.fromtimestamp(int(t), tz=dt.UTC)
        records.append({
            "reviewerID": cat.user_ids[u],
            "asin": cat.asins[i],
            "reviewerName": cat.user_names[u],
            "helpful": [int(rng.integers(0, total + 1)), total],
            "reviewText": text,
            "overall": float(r),
            "summary": str(rng.choice(SUMMARIES[r])),
            "unixReviewTime": int(t),
            "reviewTime": f"{day.month:02d} {day.day}, {day.year}",
        })
    return records


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape (star: alternating radii; diamond: a narrowed square) at (cx, cy)."""
    if shape == "star":
        radii, n = [r if k % 2 == 0 else r * 0.45 for k in range(10)], 10
    else:
        n = {"square": 4, "triangle": 3, "hexagon": 6, "diamond": 4}[shape]
        radii = [r] * n
    offset = angle + (math.pi / 4 if shape == "square" else -math.pi / 2)
    x_scale = 0.7 if shape == "diamond" else 1.0
    return [(cx + x_scale * radii[k] * math.cos(offset + 2 * math.pi * k / n),
             cy + radii[k] * math.sin(offset + 2 * math.pi * k / n)) for k in range(n)]


def render_image(colour: str, shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """A product shot: one filled shape in the item's colour, jittered in place, size and tint."""
    grey = int(rng.integers(225, 256))
    img = Image.new("RGB", (size, size), (grey, grey, grey))
    draw = ImageDraw.Draw(img)
    tint = np.clip(np.array(COLOURS[colour]) + rng.integers(-12, 13, 3), 0, 255)
    fill = (int(tint[0]), int(tint[1]), int(tint[2]))
    r = size * float(rng.uniform(0.28, 0.4))
    cx, cy = size / 2 + rng.uniform(-0.06, 0.06, 2) * size
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, float(rng.uniform(-0.15, 0.15))), fill=fill)
    return img


def image_features(cat: Catalogue, params: DemoParams, rng: np.random.Generator) -> np.ndarray:
    """(n_items, 4096) float32: ReLU of a fixed random projection of colour/shape one-hots + noise."""
    n = len(cat.asins)
    n_col, n_shape = len(COLOURS), len(SHAPES)
    onehot = np.zeros((n, n_col + n_shape))
    onehot[np.arange(n), cat.attrs["colour"]] = 1.0
    onehot[np.arange(n), n_col + cat.attrs["shape"]] = 1.0
    projection = rng.normal(0.0, 1.0, (n_col + n_shape, FEATURE_DIM))
    raw = onehot @ projection + rng.normal(0.0, params.feature_noise, (n, FEATURE_DIM))
    return np.maximum(raw, 0.0).astype(np.float32)


def _write_gzip_lines(path: Path, lines: list[str]) -> None:
    """Gzip with mtime 0 and no embedded name, so equal content gives equal bytes."""
    with atomic_path(path) as tmp, open(tmp, "wb") as raw, \
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        for line in lines:
            gz.write(line.encode("utf-8") + b"\n")


def _write_features(path: Path, asins: list[str], feats: np.ndarray) -> None:
    """The 2014 binary layout: per record a 10-byte ASCII asin then 4096 little-endian float32."""
    little = feats.astype("<f4", copy=False)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        for asin, row in zip(asins, little, strict=True):
            fh.write(asin.encode("ascii"))
            fh.write(row.tobytes())


def generate(out_dir: Path, params: DemoParams, log: logging.Logger) -> dict[str, int]:
    """Write the whole demo dataset into ``out_dir``; returns summary counts."""
    rng = np.random.default_rng(params.seed)
    cat = make_catalogue(params, rng)
    inter = sample_interactions(cat, params, rng)
    metas = item_meta(cat, params, rng)
    reviews = review_records(cat, inter, rng)
    feats = image_features(cat, params, rng)

    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    for i, asin in enumerate(cat.asins):
        img = render_image(list(COLOURS)[cat.attrs["colour"][i]], SHAPES[cat.attrs["shape"][i]],
                           params.image_size, rng)
        with atomic_path(image_dir / f"{asin}.png") as tmp:
            img.save(tmp, format="PNG")
    _write_gzip_lines(out_dir / "reviews.json.gz", [json.dumps(r) for r in reviews])
    _write_gzip_lines(out_dir / "meta.json.gz", [repr(m) for m in metas])
    _write_features(out_dir / "image_features.b", cat.asins, feats)

    truth = {
        "params": asdict(params),
        "attribute_values": ATTRIBUTE_VALUES,
        "text_attributes": ["category", "material", "price_tier"],
        "visual_attributes": ["colour", "shape"],
        "items": [
            {"asin": asin, "log_popularity": float(cat.log_popularity[i]),
             **{a: ATTRIBUTE_VALUES[a][cat.attrs[a][i]] for a in ATTRIBUTES}}
            for i, asin in enumerate(cat.asins)
        ],
        "users": [
            {"reviewerID": uid,
             **{a: [ATTRIBUTE_VALUES[a][v] for v in np.flatnonzero(cat.prefs[a][u])] for a in ATTRIBUTES}}
            for u, uid in enumerate(cat.user_ids)
        ],
    }
    write_json(out_dir / "truth.json", truth)
    counts = {"users": params.n_users, "items": params.n_items, "interactions": len(reviews)}
    log.info("demo dataset in %s: %d users, %d items, %d interactions", out_dir,
             counts["users"], counts["items"], counts["interactions"])
    return counts


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="vlif_pipeline demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--n-users", type=int, default=2000)
    parser.add_argument("--n-items", type=int, default=800)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--mean-interactions", type=float, default=16.0,
                        help="mean interactions per user (minimum 5); default gives ~32K for 2000 users")
    parser.add_argument("--feature-noise", type=float, default=1.0,
                        help="std of the Gaussian noise added to the 4096-d image features before the ReLU")
    parser.add_argument("--log", default=None)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """CLI entry: ``demo --out-dir D --seed S --n-users N --n-items M --image-size PX``."""
    args = _parse(argv)
    log = setup_logging(args.log, "vlif.demo")

    def body() -> None:
        if args.n_items < 20 or args.n_items > 100_000:
            raise StageError(f"demo: --n-items must be in 20..100000, got {args.n_items}")
        if args.n_users < 1:
            raise StageError(f"demo: --n-users must be positive, got {args.n_users}")
        if args.image_size < 16:
            raise StageError(f"demo: --image-size must be at least 16 pixels, got {args.image_size}")
        if args.mean_interactions < 5:
            raise StageError(f"demo: --mean-interactions must be at least 5, got {args.mean_interactions}")
        if args.feature_noise < 0:
            raise StageError(f"demo: --feature-noise must be non-negative, got {args.feature_noise}")
        params = DemoParams(seed=args.seed, n_users=args.n_users, n_items=args.n_items,
                            image_size=args.image_size, mean_interactions=args.mean_interactions,
                            feature_noise=args.feature_noise)
        generate(args.out_dir, params, log)

    return run_stage(body, log)
