"""Synthetic Qwen2-VL prompt batches with random pixels, for the fast decoder's tests and benchmark.

Why in the package: the GPU benchmark runs on a bare machine from this source tree, and the tests
need the same layout; neither needs a tokenizer or real images to exercise the decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SpecialTokens:
    """The token ids a Qwen2-VL chat prompt with one image uses."""

    image: int
    vision_start: int
    vision_end: int
    im_start: int
    im_end: int
    pad: int


def prompt_batch(
    grids: Sequence[tuple[int, int, int]], text_lengths: Sequence[int], tokens: SpecialTokens, vocab: int, seed: int
) -> dict[str, torch.Tensor]:
    """Left-padded rows ``<im_start><vision_start> image <vision_end> text <im_end><im_start>``.

    One image per row with grid (t, h, w) (t*h*w/4 image tokens after the 2x2 merge), text of the
    given length drawn from ids [0, vocab); pixel values (sum t*h*w, 3*2*14*14) are Gaussian.
    Returns input_ids and attention_mask (B, L), pixel_values and image_grid_thw (B, 3), on the CPU.
    """
    g = torch.Generator().manual_seed(seed)
    rows = []
    for (t, h, w), n_text in zip(grids, text_lengths, strict=True):
        text = torch.randint(0, vocab, (n_text,), generator=g)
        rows.append(torch.cat([
            torch.tensor([tokens.im_start, tokens.vision_start]), torch.full((t * h * w // 4,), tokens.image),
            torch.tensor([tokens.vision_end]), text, torch.tensor([tokens.im_end, tokens.im_start]),
        ]))
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), tokens.pad)
    attention_mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, length - len(row):] = row
        attention_mask[i, length - len(row):] = 1
    n_patches = sum(t * h * w for t, h, w in grids)
    return dict(input_ids=input_ids, attention_mask=attention_mask,
                pixel_values=torch.randn(n_patches, 3 * 2 * 14 * 14, generator=g),
                image_grid_thw=torch.tensor(grids))
