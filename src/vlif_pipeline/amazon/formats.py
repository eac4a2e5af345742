"""Field layouts of the three Amazon releases (2014, 2018, 2023): where each value lives.

Each release names the same facts differently; this module maps one parsed review/meta record onto
the pipeline's columns and nothing else, so the readers stay format-agnostic.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_PRICE = re.compile(r"^\s*\$?\s*(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?\s*(?:-\s*\$?\s*[\d,.]+\s*)?$")
# Amazon image URLs carry a resize suffix ("51Iph04Jy3L._SX38_SY50_CR,0,0,38,50_.jpg"); without it
# the same URL serves the full-size image, which is what a captioner needs.
_RESIZE_SUFFIX = re.compile(r"\._[^/]*_(\.[A-Za-z]+)$")


def parse_price(value: Any) -> float | None:
    """A price as a float: numbers as is, "$1,299.99" parsed, a range gives its lower bound.

    Anything else (scraped CSS, "None", empty) is null rather than a guess.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) and value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _PRICE.match(value)
    if match is None:
        return None
    return float(match.group(1).replace(",", "") + (match.group(2) or ""))


def full_size_image_url(url: str) -> str:
    """Strip Amazon's resize suffix so the URL points at the original image."""
    if "images-amazon.com" not in url and "media-amazon.com" not in url:
        return url
    return _RESIZE_SUFFIX.sub(r"\1", url)


def _first_url(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, list):
        for element in value:
            url = _first_url(element)
            if url:
                return url
    return None


@dataclass(frozen=True)
class RawItem:
    """The uncleaned fields of one meta record; text cleaning happens later, in one place."""

    title: Any
    brand: Any
    description: Any
    categories: Any
    image_url: str | None
    price: float | None


def _item_2014(rec: dict[str, Any]) -> RawItem:
    return RawItem(
        title=rec.get("title"),
        brand=rec.get("brand"),
        description=rec.get("description"),
        categories=rec.get("categories"),
        image_url=_first_url(rec.get("imUrl")),
        price=parse_price(rec.get("price")),
    )


def _item_2018(rec: dict[str, Any]) -> RawItem:
    url = None
    for key in ("imageURLHighRes", "imageURL", "image"):
        url = _first_url(rec.get(key))
        if url:
            break
    return RawItem(
        title=rec.get("title"),
        brand=rec.get("brand"),
        description=rec.get("description"),
        categories=rec.get("category"),
        image_url=url,
        price=parse_price(rec.get("price")),
    )


def _image_2023(images: Any) -> str | None:
    if not isinstance(images, list):
        return None
    for size in ("hi_res", "large"):
        for image in images:
            if isinstance(image, dict):
                url = _first_url(image.get(size))
                if url:
                    return url
    return None


def _item_2023(rec: dict[str, Any]) -> RawItem:
    categories = rec.get("categories") or rec.get("main_category")
    return RawItem(
        title=rec.get("title"),
        brand=rec.get("store"),
        description=rec.get("description"),
        categories=categories,
        image_url=_image_2023(rec.get("images")),
        price=parse_price(rec.get("price")),
    )


@dataclass(frozen=True)
class ReleaseFormat:
    """Where one release keeps the review fields and how its meta maps onto items.

    ``meta_signature``: meta keys that only this release's records carry; a meta file whose
    records carry another release's and not these is in the wrong layout for this format (its
    image URLs and categories would silently read as missing).
    """

    name: str
    user: str
    item: str
    rating: str
    time: str
    time_divisor: int  # 1000 for millisecond timestamps
    meta_id: str
    to_item: Callable[[dict[str, Any]], RawItem]
    meta_signature: frozenset[str]


FORMATS: dict[str, ReleaseFormat] = {
    "amazon2014": ReleaseFormat(
        "amazon2014", "reviewerID", "asin", "overall", "unixReviewTime", 1, "asin", _item_2014,
        frozenset({"imUrl", "salesRank", "related"}),
    ),
    "amazon2018": ReleaseFormat(
        "amazon2018", "reviewerID", "asin", "overall", "unixReviewTime", 1, "asin", _item_2018,
        frozenset({"imageURL", "imageURLHighRes", "also_buy", "also_view", "category"}),
    ),
    "amazon2023": ReleaseFormat(
        "amazon2023", "user_id", "parent_asin", "rating", "timestamp", 1000, "parent_asin", _item_2023,
        frozenset({"parent_asin", "main_category", "store"}),
    ),
}
