"""Qwen2-VL / Qwen2.5-VL model inputs from the tokenizer and image processor alone.

In transformers 5.x the Qwen-VL *processor* classes require torchvision (for a video processor we
never use), and ``qwen-vl-utils`` imports torchvision at import time; neither is installable next to
the CPU torch here, nor present on the GPU machine. What the processor does for images is small and
documented: turn each image into patches with ``Qwen2VLImageProcessor`` (its PIL backend, which also
applies Qwen's resize rule) and expand every ``<|image_pad|>`` placeholder in the prompt to
``grid_t * grid_h * grid_w / merge_size**2`` copies. This module does exactly that, with left padding
for batched generation. It imports only torch and PIL at module level (the GPU benchmark imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

IMAGE_PAD = "<|image_pad|>"


def image_processor_class() -> type:
    """The PIL-backed Qwen2-VL image processor (named ``...Pil`` in newer transformers releases)."""
    try:
        from transformers import Qwen2VLImageProcessorPil as cls
    except ImportError:
        from transformers import Qwen2VLImageProcessor as cls
    return cls


def load_image_processor(model: str) -> Any:
    """Load the image processor config of a hub id or local folder without touching torchvision."""
    return image_processor_class().from_pretrained(model)


def to_rgb(image: Image.Image) -> Image.Image:
    """Flatten transparency onto white (product shots are on white) and convert to RGB."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")


def image_token_count(grid_thw: Sequence[int], merge_size: int) -> int:
    """Number of ``<|image_pad|>`` tokens one image occupies in the language model's sequence."""
    t, h, w = (int(x) for x in grid_thw)
    return t * h * w // (merge_size * merge_size)


def expand_image_pads(text: str, counts: Sequence[int], image_pad: str = IMAGE_PAD) -> str:
    """Replace the k-th ``image_pad`` in ``text`` by ``counts[k]`` copies of it."""
    pieces = text.split(image_pad)
    if len(pieces) - 1 != len(counts):
        raise ValueError(f"prompt has {len(pieces) - 1} image placeholders but {len(counts)} images were given")
    out = [pieces[0]]
    for count, piece in zip(counts, pieces[1:]):
        out.append(image_pad * count)
        out.append(piece)
    return "".join(out)


@dataclass
class QwenBatch:
    """Left-padded model inputs; ``pixel_values``/``image_grid_thw`` are None for a text-only batch.

    ``mm_token_type_ids`` (B, L) is 1 at image tokens, 0 elsewhere: transformers >= 5.2x needs it to
    compute Qwen's 3-D multimodal rotary positions (without it Qwen2.5-VL silently falls back to 1-D
    positions); older releases derive them from ``input_ids`` and do not accept it.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pixel_values: torch.Tensor | None
    image_grid_thw: torch.Tensor | None
    mm_token_type_ids: torch.Tensor

    def to(
        self, device: torch.device | str, dtype: torch.dtype, with_token_types: bool = True
    ) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model's ``forward``/``generate`` on ``device``."""
        out = {"input_ids": self.input_ids.to(device), "attention_mask": self.attention_mask.to(device)}
        if self.pixel_values is not None and self.image_grid_thw is not None:
            out["pixel_values"] = self.pixel_values.to(device, dtype)
            out["image_grid_thw"] = self.image_grid_thw.to(device)
        if with_token_types:
            out["mm_token_type_ids"] = self.mm_token_type_ids.to(device)
        return out


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token lists right-aligned (decoding appends on the right), with the attention mask."""
    length = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, length - len(seq):] = torch.as_tensor(seq, dtype=torch.long)
            mask[row, length - len(seq):] = 1
    return ids, mask


def build_batch(
    tokenizer: Any,
    image_processor: Any,
    prompts: Sequence[str],
    images: Sequence[Image.Image | None],
) -> QwenBatch:
    """Tokenise chat-formatted prompts, one optional image each, into a left-padded batch.

    ``prompts[k]`` must contain exactly one image placeholder when ``images[k]`` is an image and none
    otherwise; the placeholders are expanded to the image's real token count.
    """
    if len(prompts) != len(images):
        raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
    present = [img for img in images if img is not None]
    pixel_values = grid = None
    counts: list[int] = []
    if present:
        processed = image_processor(images=present, return_tensors="pt")
        pixel_values, grid = processed["pixel_values"], processed["image_grid_thw"]
        counts = [image_token_count(g, image_processor.merge_size) for g in grid.tolist()]
    sequences = []
    next_image = 0
    for prompt, image in zip(prompts, images):
        image_counts = [] if image is None else [counts[next_image]]
        next_image += image is not None
        text = expand_image_pads(prompt, image_counts)
        sequences.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    input_ids, attention_mask = left_pad(sequences, tokenizer.pad_token_id)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    token_types = (input_ids == image_id).to(torch.int32)
    return QwenBatch(input_ids, attention_mask, pixel_values, grid, token_types)
