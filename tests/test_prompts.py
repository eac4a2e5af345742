"""Prompt texts, their hashes, and the light import surface the GPU benchmark relies on."""

from __future__ import annotations

import subprocess
import sys

import pytest

from vlif_pipeline.vision import prompts


def test_title_cot_uses_title_plain_does_not() -> None:
    cot, plain = prompts.get_prompt("title_cot"), prompts.get_prompt("plain")
    text = cot.image_text('Baby "Snug" Carrier\n blue')
    assert "Baby 'Snug' Carrier blue" in text and "2-3 sentence" in text and "ONLY" in text
    assert "step by step" in text
    assert plain.image_text("Baby Carrier") == plain.image_text("anything else")
    assert cot.uses_title and not plain.uses_title
    assert prompts.MISSING_TITLE in cot.image_text(None)
    assert "Baby Carrier" in plain.text_only_text("Baby Carrier")


def test_hashes_are_stable_and_distinct() -> None:
    cot, plain = prompts.get_prompt("title_cot"), prompts.get_prompt("plain")
    assert cot.hash == prompts.get_prompt("title_cot").hash
    assert cot.hash != plain.hash and len(cot.hash) == 16
    edited = prompts.PromptSpec("title_cot", cot.with_image + " ", cot.without_image)
    assert edited.hash != cot.hash


def test_unknown_prompt_names_the_known_ones() -> None:
    with pytest.raises(KeyError, match="plain, released, title_cot"):
        prompts.get_prompt("fancy")


def test_chat_messages_put_the_image_first() -> None:
    assert prompts.chat_messages("hi", True) == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}
    ]
    assert prompts.chat_messages("hi", False)[0]["content"] == [{"type": "text", "text": "hi"}]


def test_gpu_side_modules_import_without_polars_or_qwen_vl_utils() -> None:
    """The GPU machine has neither polars nor qwen-vl-utils nor torchvision."""
    code = (
        "import sys; import vlif_pipeline.vision.prompts, vlif_pipeline.vision.qwen_inputs, "
        "vlif_pipeline.vision.captioner, vlif_pipeline.vision.gather; "
        "bad = [m for m in ('polars', 'qwen_vl_utils', 'torchvision') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
