"""Captioning prompts: the one versioned place where their wording lives.

``title_cot`` is the paper's visual enrichment prompt (section 2.1): the item title tells the model
which object in the picture is the product, the model reasons step by step and returns only a final
2-3 sentence description of the product's essential features. ``plain`` is the ablation without the
title. ``released`` follows the specification of the prompt in the paper's released code (title
given, first a general description of what the product is, then 2-3 sentences, only the final
description returned), in this project's own words. ``text_only`` is used for items without a
usable image when the stage's policy says so.

The prompt hash is computed from ``PROMPT_VERSION`` and the texts themselves and is part of the
caption cache key and of every output row, so changed wording never reuses stale captions; bump
the version when the way prompts are rendered changes while the texts do not. Imports nothing
heavy (the GPU benchmark uses it).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

PROMPT_VERSION = 1

MISSING_TITLE = "(no title given)"

_TITLE_COT = (
    'The product in this image is sold under the title: "{title}".\n'
    "Work through it step by step. First, find the object in the image that the title refers to and "
    "decide what kind of product it is, in general terms. Next, note its essential visible features: "
    "shape, colour, material, parts, and what it is used for; ignore people and background objects. "
    "Finally, write a description of the product in 2-3 sentences.\n"
    "Reply with ONLY that final 2-3 sentence description, without the steps."
)
_PLAIN = (
    "Describe the product shown in this image in 2-3 sentences: what kind of product it is, its shape, "
    "colour and material, and what it is used for.\n"
    "Reply with ONLY the description."
)
_RELEASED = (
    'This is a product image. The product is sold under the title: "{title}".\n'
    "Consider how you would describe this product in general terms, as a kind of item, before any "
    "detail. Then describe this product in 2-3 sentences.\n"
    "Give ONLY the final description."
)
_TEXT_ONLY = (
    'A product is sold under the title: "{title}". No image of it is available.\n'
    "From the title alone, describe the product in 2-3 sentences: what kind of product it is and its "
    "likely essential features and use.\n"
    "Reply with ONLY the description."
)


@dataclass(frozen=True)
class PromptSpec:
    """A named prompt: the instruction shown with the image, and the one used without an image."""

    name: str
    with_image: str
    without_image: str

    @property
    def uses_title(self) -> bool:
        """Whether the image prompt depends on the title (it then enters the cache key)."""
        return "{title}" in self.with_image

    @property
    def hash(self) -> str:
        """Short stable digest of the version, name and both texts."""
        blob = json.dumps([PROMPT_VERSION, self.name, self.with_image, self.without_image])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def image_text(self, title: str | None) -> str:
        """The user instruction that accompanies an image."""
        return self.with_image.format(title=_clean_title(title))

    def text_only_text(self, title: str) -> str:
        """The user instruction for an item without a usable image (needs a title)."""
        return self.without_image.format(title=_clean_title(title))


def _clean_title(title: str | None) -> str:
    """Titles go inside double quotes on one line; a missing title says so explicitly."""
    if title is None or not title.strip():
        return MISSING_TITLE
    return " ".join(title.replace('"', "'").split())


PROMPTS: dict[str, PromptSpec] = {
    "title_cot": PromptSpec("title_cot", _TITLE_COT, _TEXT_ONLY),
    "plain": PromptSpec("plain", _PLAIN, _TEXT_ONLY),
    "released": PromptSpec("released", _RELEASED, _TEXT_ONLY),
}


def get_prompt(name: str) -> PromptSpec:
    """Look a prompt up by name, with the valid names in the error."""
    try:
        return PROMPTS[name]
    except KeyError:
        raise KeyError(f"unknown prompt {name!r}; known prompts: {', '.join(sorted(PROMPTS))}") from None


def chat_messages(instruction: str, with_image: bool) -> list[dict]:
    """One user turn in the chat format Qwen-VL templates expect (image first, then the text)."""
    content: list[dict] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": instruction})
    return [{"role": "user", "content": content}]
