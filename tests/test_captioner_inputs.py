"""Model inputs built without the torchvision-dependent processor match Qwen's token counts."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlif_pipeline.vision import qwen_inputs


@pytest.fixture(scope="module")
def qwen_processor():
    """The image processor with Qwen2.5-VL-7B-Instruct's published preprocessing settings."""
    cls = qwen_inputs.image_processor_class()
    return cls(size={"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}, patch_size=14, merge_size=2,
               temporal_patch_size=2)


@pytest.mark.parametrize(("side", "grid", "tokens"), [(512, [1, 36, 36], 324), (224, [1, 16, 16], 64)])
def test_real_qwen_token_counts(qwen_processor, side: int, grid: list[int], tokens: int) -> None:
    out = qwen_processor(images=[Image.new("RGB", (side, side), (1, 2, 3))], return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [grid]
    assert out["pixel_values"].shape == (grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14)
    assert qwen_inputs.image_token_count(grid, 2) == tokens


def test_expand_image_pads() -> None:
    pad = qwen_inputs.IMAGE_PAD
    assert qwen_inputs.expand_image_pads(f"a{pad}b{pad}c", [2, 3]) == f"a{pad * 2}b{pad * 3}c"
    with pytest.raises(ValueError, match="1 image placeholders but 2 images"):
        qwen_inputs.expand_image_pads(f"a{pad}b", [1, 1])


def test_left_pad() -> None:
    ids, mask = qwen_inputs.left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


class CharTokenizer:
    """Stands in for a tokenizer: one id per character, the image pad a single special id."""

    pad_token_id = 0

    def convert_tokens_to_ids(self, token: str) -> int:
        return 1000 if token == qwen_inputs.IMAGE_PAD else 3

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        pieces = text.split(qwen_inputs.IMAGE_PAD)
        ids: list[int] = []
        for k, piece in enumerate(pieces):
            if k:
                ids.append(1000)
            ids.extend(ord(ch) for ch in piece)
        return {"input_ids": ids}


def test_build_batch_mixes_image_and_text_rows(qwen_processor) -> None:
    pad = qwen_inputs.IMAGE_PAD
    images = [Image.new("RGBA", (224, 224), (0, 0, 0, 0)), None, Image.new("L", (512, 512), 7)]
    batch = qwen_inputs.build_batch(CharTokenizer(), qwen_processor, [f"a{pad}b", "text only", f"{pad}c"], images)
    assert batch.image_grid_thw.tolist() == [[1, 16, 16], [1, 36, 36]]
    assert (batch.input_ids == 1000).sum(dim=1).tolist() == [64, 0, 324]
    assert batch.attention_mask.sum(dim=1).tolist() == [2 + 64, 9, 1 + 324]
    assert batch.attention_mask[:, -1].all()  # left padding: every row ends with a real token
    assert torch.equal(batch.mm_token_type_ids, (batch.input_ids == 1000).int())
    kwargs = batch.to("cpu", torch.bfloat16)
    assert kwargs["pixel_values"].dtype == torch.bfloat16 and kwargs["input_ids"].dtype == torch.long
    assert "mm_token_type_ids" in kwargs and "mm_token_type_ids" not in batch.to("cpu", torch.float32, False)


def test_to_rgb_flattens_transparency_onto_white() -> None:
    rgba = Image.new("RGBA", (2, 2), (255, 0, 0, 0))
    assert qwen_inputs.to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)
    assert qwen_inputs.to_rgb(Image.new("L", (2, 2), 9)).mode == "RGB"
