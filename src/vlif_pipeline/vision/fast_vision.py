"""Qwen2.5-VL vision tower with batched attention.

The stock tower runs one attention call per window and per image (it splits the packed sequence at
`cu_seqlens`): for a batch of 128 images of 512x512 that is ~25 windows x 128 images = 3,200 small
calls per windowed layer, 32 layers deep. Here the segments of equal length are gathered into one batch and
attended with one `scaled_dot_product_attention` call per distinct length (3 for 36x36 grids), which
is the same arithmetic. Everything else is the model's own modules and weights: rotary table, norms,
projections and the patch merger; the patch embedding and the MLPs use their weights in a layout that
suits the GPU better (`TowerLayout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

# Patches per vision chunk: bounds activation memory (~0.5 GiB per MLP intermediate at the 7B's width)
# while keeping the matrix products large. Images never straddle chunks.
MAX_PATCHES_PER_CHUNK = 1 << 16


@dataclass(frozen=True)
class SegmentGroup:
    """Segments of one length: `(G, n)` row indices into the packed sequence, or, when the segments
    lie back to back, the contiguous range `[start, start + G * n)` (no gather needed)."""

    length: int
    count: int
    start: int | None
    index: torch.Tensor | None


def group_segments(cu_seqlens: list[int], device: torch.device) -> list[SegmentGroup]:
    """Group the segments `[cu[i], cu[i+1])` of a packed sequence by length."""
    by_length: dict[int, list[int]] = {}
    for lo, hi in zip(cu_seqlens[:-1], cu_seqlens[1:]):
        if hi > lo:
            by_length.setdefault(hi - lo, []).append(lo)
    groups = []
    for length, starts in by_length.items():
        back_to_back = all(b - a == length for a, b in zip(starts, starts[1:]))
        if back_to_back:
            groups.append(SegmentGroup(length, len(starts), starts[0], None))
        else:
            index = torch.tensor(starts, device=device)[:, None] + torch.arange(length, device=device)
            groups.append(SegmentGroup(length, len(starts), None, index))
    return groups


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in float32, as the tower does. x: (N, H, D); cos, sin: (N, D)."""
    x32 = x.float()
    half = x32.shape[-1] // 2
    rotated = torch.cat((-x32[..., half:], x32[..., :half]), dim=-1)
    return (x32 * cos[:, None] + rotated * sin[:, None]).to(x.dtype)


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: list[SegmentGroup], scale: float
) -> torch.Tensor:
    """Bidirectional attention within each segment. q, k, v: (N, H, D) -> (N, H, D)."""
    out = torch.empty_like(q)
    for g in groups:
        if g.index is None:
            rows = slice(g.start, g.start + g.count * g.length)
            qs, ks, vs = (t[rows].view(g.count, g.length, *t.shape[1:]).transpose(1, 2) for t in (q, k, v))
            out[rows] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(1, 2).flatten(0, 1)
        else:
            qs, ks, vs = (t[g.index].transpose(1, 2) for t in (q, k, v))
            out[g.index] = F.scaled_dot_product_attention(qs, ks, vs, scale=scale).transpose(1, 2)
    return out


def _attention_block(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     groups: list[SegmentGroup]) -> torch.Tensor:
    """The vision attention sublayer with the module's own projections. x: (N, C) -> (N, C)."""
    n = x.shape[0]
    q, k, v = attn.qkv(x).view(n, 3, attn.num_heads, -1).unbind(1)
    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
    o = grouped_attention(q, k, v, groups, scale=attn.head_dim**-0.5)
    return attn.proj(o.reshape(n, -1))


def _patch_embed(embed: nn.Module, pixels: torch.Tensor, as_matmul: bool) -> torch.Tensor:
    """Patch embedding. Its Conv3d has stride = kernel = one patch, so it is one dot product per patch:
    as a matrix product it skips cuDNN's search over 3-D convolution algorithms. (N, C*T*P*P) -> (N, C')."""
    if not as_matmul:
        return embed(pixels)
    weight = embed.proj.weight
    return F.linear(pixels.reshape(-1, weight[0].numel()), weight.reshape(weight.shape[0], -1), embed.proj.bias)


def _padded(t: torch.Tensor | None, pad: tuple[int, ...]) -> torch.Tensor | None:
    return None if t is None else F.pad(t, pad)


def _mlp(mlp: nn.Module, x: torch.Tensor, multiple: int) -> torch.Tensor:
    """The block's gated MLP with its hidden width zero-padded to a multiple of `multiple`.

    The 7B tower's width, 3420, makes bf16 rows of 6,840 bytes, not 16-byte aligned, which keeps
    cuBLAS off its fastest kernels. Zero rows in gate/up and zero columns in down only add exact zeros.
    x: (N, C) -> (N, C).
    """
    pad = -mlp.gate_proj.out_features % multiple
    if pad == 0:
        return mlp(x)
    gate = F.linear(x, F.pad(mlp.gate_proj.weight, (0, 0, 0, pad)), _padded(mlp.gate_proj.bias, (0, pad)))
    up = F.linear(x, F.pad(mlp.up_proj.weight, (0, 0, 0, pad)), _padded(mlp.up_proj.bias, (0, pad)))
    return F.linear(mlp.act_fn(gate) * up, F.pad(mlp.down_proj.weight, (0, pad)), mlp.down_proj.bias)


@dataclass(frozen=True)
class TowerLayout:
    """Choices that change speed, not results; switchable so that the benchmark can show each one's effect.

    patch_embed_as_matmul: see `_patch_embed`; mlp_width_multiple: see `_mlp` (1: the module's width).
    """

    patch_embed_as_matmul: bool = True
    mlp_width_multiple: int = 64


def _encode_chunk(visual: nn.Module, pixels: torch.Tensor, grid_thw: torch.Tensor, layout: TowerLayout
                  ) -> torch.Tensor:
    """Merged image embeddings for the images of `grid_thw` (CPU, (n_images, 3)), in input order.
    pixels: (sum t*h*w, C*T*P*P) -> (sum t*h*w / merge**2, out_hidden)."""
    device = pixels.device
    unit = visual.spatial_merge_size**2
    position_ids = get_vision_position_ids(grid_thw, visual.spatial_merge_size).to(device)
    window_index, cu_window = get_vision_window_index(
        grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
        patch_size=visual.patch_size,
    )
    window_groups = group_segments(cu_window.tolist(), device)
    full_groups = group_segments(get_vision_cu_seqlens(grid_thw).tolist(), device)
    window_index = window_index.to(device)

    def to_window_order(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, unit, t.shape[-1])[window_index].view(-1, t.shape[-1])

    x = to_window_order(_patch_embed(visual.patch_embed, pixels, layout.patch_embed_as_matmul))
    cos, sin = (to_window_order(t) for t in visual.rotary_pos_emb(x, position_ids))
    full_blocks = set(visual.fullatt_block_indexes)
    for i, block in enumerate(visual.blocks):
        groups = full_groups if i in full_blocks else window_groups
        x = x + _attention_block(block.attn, block.norm1(x), cos, sin, groups)
        x = x + _mlp(block.mlp, block.norm2(x), layout.mlp_width_multiple)
    return visual.merger(x)[torch.argsort(window_index)]


def encode_images(visual: nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor,
                  layout: TowerLayout = TowerLayout()) -> torch.Tensor:
    """Image embeddings, one row per image token, images in order.

    pixel_values: (sum t*h*w, C*T*P*P) flattened patches as the Qwen2-VL image processor makes them;
    image_grid_thw: (n_images, 3). Returns (sum t*h*w / merge**2, out_hidden) in the tower's dtype.
    """
    grid = image_grid_thw.cpu()
    patches = grid.prod(-1).tolist()
    pixels = pixel_values.to(visual.patch_embed.proj.weight.dtype)
    chunks, start, first, total = [], 0, 0, 0
    for i, n in enumerate(patches):
        if total and total + n > MAX_PATCHES_PER_CHUNK:
            chunks.append(_encode_chunk(visual, pixels[start:start + total], grid[first:i], layout))
            start, first, total = start + total, i, 0
        total += n
    chunks.append(_encode_chunk(visual, pixels[start:start + total], grid[first:], layout))
    return torch.cat(chunks)
