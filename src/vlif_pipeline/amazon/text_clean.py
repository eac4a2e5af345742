"""Turn scraped Amazon metadata values into plain text.

Real dumps hold HTML fragments (``<span class="a-size-medium ...``), entities (``&amp;``), markup
inside descriptions, lists of strings and lists of lists. Everything downstream (captions prompts,
sentence embeddings) wants one clean line of text per field, so cleaning happens once, here.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

_SCRIPT = re.compile(r"<(script|style)\b.*?(?:</\1\s*>|$)", re.IGNORECASE | re.DOTALL)
# A tag starts with a name, "/", "!" or "?": "ages <3 or >5" and "5 < 6" are text, not markup.
_TAG = re.compile(r"<[A-Za-z/!?][^<>]*>")
# A tag cut off by the scraper: "<span class=..." at the end, or '... Magazines" />' at the start
# (a quote right before ">" or "/>": '12" > 10"' is text).
_OPEN_TAG_TAIL = re.compile(r"<[A-Za-z/!][^>]*$", re.DOTALL)
_TAG_HEAD_TAIL = re.compile(r"^[^<>]*[\"'](?:\s*/>|>)", re.DOTALL)


def clean_text(value: Any) -> str:
    """Plain text of one scalar value: tags and entities stripped, whitespace collapsed.

    ``None`` gives ``""``; a value that is nothing but markup also gives ``""``.
    """
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if "<" not in text and ">" not in text and "&" not in text:
        return " ".join(text.split())  # the common case, without any regex
    for _ in range(2):  # entities are sometimes double-encoded: "&amp;lt;br&amp;gt;"
        text = html.unescape(text)
        text = _SCRIPT.sub(" ", text)
        text = _TAG.sub(" ", text)
        text = _OPEN_TAG_TAIL.sub(" ", text)
        text = _TAG_HEAD_TAIL.sub(" ", text)
    return " ".join(text.split())


def _flatten(value: Any, out: list[str]) -> list[str]:
    if isinstance(value, (list, tuple)):
        for element in value:
            _flatten(element, out)
    elif value is not None:
        out.append(value if isinstance(value, str) else str(value))
    return out


def clean_join(value: Any, sep: str, unique: bool = False) -> tuple[str, bool]:
    """Clean a scalar or a (nested) list, join the non-empty parts with ``sep``.

    Returns the text and whether cleaning changed any part (the caller then keeps the raw value).
    ``unique`` drops repeated parts, keeping first occurrences (2014 category paths repeat roots).
    """
    parts = _flatten(value, [])
    cleaned = [clean_text(part) for part in parts]
    kept = [text for text in cleaned if text]
    if unique:
        kept = list(dict.fromkeys(kept))
    return sep.join(kept), cleaned != parts


def raw_repr(value: Any) -> str:
    """The raw value as one string, for the ``raw_<col>`` columns (lists as JSON)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
