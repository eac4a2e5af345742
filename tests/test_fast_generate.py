"""The fast captioning path gives plain `generate`'s greedy tokens (tiny random Qwen2.5-VL, CPU, fp32)."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

from vlif_pipeline.vision import fast_generate, fast_vision
from vlif_pipeline.vision.fast_generate import greedy_generate, mrope_positions
from vlif_pipeline.vision.fast_vision import TowerLayout, encode_images
from vlif_pipeline.vision.synthetic import SpecialTokens, prompt_batch

VOCAB = 512
IMAGE, VIDEO, START, END, IM_START, IM_END, PAD = 511, 510, 509, 508, 507, 506, 505
TOKENS = SpecialTokens(IMAGE, START, END, IM_START, IM_END, PAD)
# Images of different sizes: 8x8 patches is one window; 12x16 has windows of 16, 8 and 4 merged tokens.
GRIDS = [(1, 12, 16), (1, 8, 8), (1, 16, 12), (1, 4, 8)]
PROMPT_LENGTHS = [7, 3, 12, 5]


@pytest.fixture(scope="module")
def model() -> Qwen2_5_VLForConditionalGeneration:
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=4096, rms_norm_eps=1e-6, eos_token_id=IM_END,
                bos_token_id=PAD, pad_token_id=PAD, use_sliding_window=False,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]})
    # intermediate_size 100 exercises the padded MLP (to 128).
    vision = dict(depth=3, hidden_size=64, intermediate_size=100, num_heads=4, out_hidden_size=64, patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[1],
                  tokens_per_second=2, hidden_act="silu", in_channels=3)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=False, image_token_id=IMAGE,
                              video_token_id=VIDEO, vision_start_token_id=START, vision_end_token_id=END)
    torch.manual_seed(0)
    m = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    with torch.no_grad():  # larger weights than the default init: rows differ, logits far from ties
        for name, p in m.named_parameters():
            if p.dim() == 1 and ("norm" in name or "ln_q" in name):
                p.fill_(1.0)
            else:
                p.normal_(0, 0.2)
    return m.eval()


def make_batch(grids: list[tuple[int, int, int]], prompt_lengths: list[int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Left-padded chat-like prompts, one image each, random pixels."""
    return prompt_batch(grids, prompt_lengths, TOKENS, vocab=500, seed=seed)


def reference(model, batch: dict[str, torch.Tensor], max_new_tokens: int, eos: int) -> torch.Tensor:
    """Plain generate's new tokens, padded to max_new_tokens with PAD."""
    out = model.generate(**batch, mm_token_type_ids=(batch["input_ids"] == IMAGE).int(), do_sample=False,
                         max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=PAD)
    new = out[:, batch["input_ids"].shape[1]:]
    return torch.nn.functional.pad(new, (0, max_new_tokens - new.shape[1]), value=PAD)


@pytest.mark.parametrize("layout", [TowerLayout(), TowerLayout(patch_embed_as_matmul=False, mlp_width_multiple=1)])
def test_vision_tower_matches_stock(model, layout):
    batch = make_batch(GRIDS, PROMPT_LENGTHS)
    with torch.no_grad():
        stock = torch.cat(model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output)
        ours = encode_images(model.model.visual, batch["pixel_values"], batch["image_grid_thw"], layout)
    # Outputs are ~7 in scale; a matrix product sums in another order than the convolution.
    torch.testing.assert_close(ours, stock, rtol=1e-5, atol=1e-4)


def test_mrope_positions_match_stock(model):
    batch = make_batch(GRIDS, PROMPT_LENGTHS)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    stock, deltas = model.model.get_rope_index(ids, (ids == IMAGE).int(), image_grid_thw=batch["image_grid_thw"],
                                               attention_mask=mask)
    ours, next_position = mrope_positions(ids, mask, batch["image_grid_thw"], IMAGE, 2)
    real = mask.bool()[None].expand(3, -1, -1)
    assert torch.equal(ours[real], stock[real])
    assert torch.equal(next_position, mask.sum(1) + deltas[:, 0])


def test_same_tokens_as_generate(model):
    batch = make_batch(GRIDS, PROMPT_LENGTHS)
    expected = reference(model, batch, 12, eos=IM_END)
    got = greedy_generate(model, **batch, max_new_tokens=12, eos_token_id=IM_END, pad_token_id=PAD)
    assert got.dtype == torch.long and got.shape == (4, 12)
    assert torch.equal(got, expected)


def test_eos_stops_rows_and_pads(model):
    batch = make_batch(GRIDS, PROMPT_LENGTHS, seed=1)
    free = reference(model, batch, 10, eos=IM_END)
    # As eos, the token that most rows emit (after their first step): rows stop at different steps.
    eos = max(free[:, 1:].unique().tolist(), key=lambda tok: int((free[:, 1:] == tok).any(1).sum()))
    expected = reference(model, batch, 10, eos=eos)
    assert (expected == PAD).any() and not (expected == PAD).all(1).any()
    got = greedy_generate(model, **batch, max_new_tokens=10, eos_token_id=eos, pad_token_id=PAD)
    assert torch.equal(got, expected)


def test_chunked_prefill_and_vision(model, monkeypatch):
    batch = make_batch(GRIDS, PROMPT_LENGTHS, seed=2)
    whole = greedy_generate(model, **batch, max_new_tokens=6, eos_token_id=None, pad_token_id=PAD)
    monkeypatch.setattr(fast_generate, "PREFILL_TOKENS_PER_CHUNK", 1)
    monkeypatch.setattr(fast_vision, "MAX_PATCHES_PER_CHUNK", 200)
    chunked = greedy_generate(model, **batch, max_new_tokens=6, eos_token_id=None, pad_token_id=PAD)
    assert torch.equal(chunked, whole)


def test_single_new_token_and_mismatched_images(model):
    batch = make_batch(GRIDS[:2], PROMPT_LENGTHS[:2])
    one = greedy_generate(model, **batch, max_new_tokens=1, eos_token_id=IM_END, pad_token_id=PAD)
    assert torch.equal(one, reference(model, batch, 1, eos=IM_END))
    batch["image_grid_thw"] = torch.tensor([GRIDS[0], (1, 8, 4)])
    batch["pixel_values"] = batch["pixel_values"][: 12 * 16 + 32]
    with pytest.raises(ValueError, match="image tokens"):
        greedy_generate(model, **batch, max_new_tokens=2, eos_token_id=IM_END, pad_token_id=PAD)


def test_text_only_batch(model):
    words = torch.tensor([[PAD, PAD, IM_START, 17, 42, IM_END, IM_START], [IM_START, 5, 6, 7, 8, IM_END, IM_START]])
    mask = (words != PAD).long()
    expected = reference(model, dict(input_ids=words, attention_mask=mask), 5, eos=IM_END)
    got = greedy_generate(model, words, mask, None, None, max_new_tokens=5, eos_token_id=IM_END, pad_token_id=PAD)
    assert torch.equal(got, expected)
