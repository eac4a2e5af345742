"""Fast greedy decoding for Qwen2.5-VL captioning.

Plain `generate` spends ~50 ms per decode step on a 7B model at batch 64 where reading the weights
takes ~6 ms: the time goes to Python, dynamic-cache bookkeeping and one kernel launch per small
operation, with the GPU waiting on the CPU.
This module runs the same arithmetic with the model's own modules (embedding, norms, projections,
rotary table, MLPs, lm_head) in a loop of its own:

- prefill: the vision tower with batched attention (`fast_vision`), image embeddings scattered into
  the prompt, multimodal rotary positions computed once, the decoder layers run over row chunks that
  write their keys and values straight into a preallocated cache;
- decode: one step over a static cache (grouped-query attention against the cache with a key mask),
  positions computed in place (after the prompt all three rotary components equal
  `max prompt position + 1 + step`), greedy choice and eos bookkeeping on the device; on CUDA the
  step is captured once in a CUDA graph and replayed per token.

`prefill` and `decode` are separate so that a benchmark can time them; `greedy_generate` is what the
captioner calls. The tokens equal `model.generate(..., do_sample=False)`'s given the multimodal
positions (`mm_token_type_ids`), up to floating-point reduction order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlif_pipeline.cuda_streams import warmup_stream
from vlif_pipeline.vision.fast_vision import TowerLayout, encode_images

# Prompt tokens per prefill chunk (rows x prompt length): bounds the MLP intermediates to ~1.2 GiB
# at the 7B's width while keeping the matrix products large.
PREFILL_TOKENS_PER_CHUNK = 1 << 14
# Graph replays between checks (a device sync) for every row having emitted eos.
EOS_CHECK_EVERY = 16


@dataclass
class DecodeState:
    """Everything decoding needs after prefill; all tensors on the model's device.

    key_cache, value_cache: per layer (B, kv_heads, cache_len, head_dim), cache_len >= prompt_len +
    max_new_tokens;
    key_valid: (B, cache_len) bool, which cache slots a query may attend to;
    next_position: (B,) long, rotary position of the first generated token;
    tokens: (B, max_new_tokens) long, the output, first column filled by prefill, pad elsewhere;
    finished: (B,) bool, rows that have emitted eos.
    """

    key_cache: list[torch.Tensor]
    value_cache: list[torch.Tensor]
    key_valid: torch.Tensor
    next_position: torch.Tensor
    prompt_len: int
    tokens: torch.Tensor
    finished: torch.Tensor


def is_supported(model: nn.Module) -> bool:
    """Whether `model` is a Qwen2.5-VL this module can decode (no sliding-window layers)."""
    inner = getattr(model, "model", None)
    visual = getattr(inner, "visual", None)
    text = getattr(getattr(model, "config", None), "text_config", None)
    return (
        visual is not None
        and hasattr(visual, "fullatt_block_indexes")
        and hasattr(inner, "language_model")
        and text is not None
        and "sliding_attention" not in (getattr(text, "layer_types", None) or [])
    )


def mrope_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_grid_thw: torch.Tensor,
    image_token_id: int, spatial_merge_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2.5-VL's multimodal rotary positions for left-padded prompts with images.

    Text tokens count up by one in all three components; an image's tokens get (t, h, w) grid
    coordinates offset by the position where the image starts, and the text after it resumes at
    that offset + max(grid h, grid w) / merge. Pad positions get 0.
    input_ids, attention_mask: (B, L), CPU; image_grid_thw: (n_images, 3), CPU, images in row order.
    Returns positions (3, B, L) and the position of the first generated token per row, (B,).
    """
    batch, length = input_ids.shape
    positions = torch.zeros(3, batch, length, dtype=torch.long)
    next_position = torch.zeros(batch, dtype=torch.long)
    grids = iter(image_grid_thw.tolist())
    for row in range(batch):
        real = attention_mask[row].bool()
        ids = input_ids[row][real]
        is_image = (ids == image_token_id).tolist()
        pos = torch.empty(3, len(ids), dtype=torch.long)
        cur, i = 0, 0
        while i < len(ids):
            if is_image[i]:
                t, h, w = next(grids)
                gh, gw = h // spatial_merge_size, w // spatial_merge_size
                grid = torch.stack(torch.meshgrid(torch.arange(t), torch.arange(gh), torch.arange(gw), indexing="ij"))
                pos[:, i:i + t * gh * gw] = grid.reshape(3, -1) + cur
                i += t * gh * gw
                cur += max(gh, gw)
            else:
                j = i
                while j < len(ids) and not is_image[j]:
                    j += 1
                pos[:, i:j] = torch.arange(cur, cur + j - i)
                cur += j - i
                i = j
        positions[:, row, real] = pos
        next_position[row] = pos.max() + 1 if len(ids) else 0
    return positions, next_position


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding. x: (B, H, L, D); cos, sin: (B, L, D) in x's dtype."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _additive(visible: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attention mask as the additive one attention kernels take (0 or -inf), built once
    rather than converted in every layer."""
    return torch.zeros(visible.shape, dtype=dtype, device=visible.device).masked_fill_(~visible, float("-inf"))


def _project_qkv(attn: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_kv: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotated queries (B, H, L, D), keys and values (B, n_kv, L, D) from h: (B, L, C)."""
    b, length, _ = h.shape
    q = attn.q_proj(h).view(b, length, -1, attn.head_dim).transpose(1, 2)
    k = attn.k_proj(h).view(b, length, n_kv, attn.head_dim).transpose(1, 2)
    v = attn.v_proj(h).view(b, length, n_kv, attn.head_dim).transpose(1, 2)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _language_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, int]:
    """The text decoder, the lm_head and the number of key/value heads."""
    text = model.model.language_model
    return text, model.lm_head, model.config.text_config.num_key_value_heads


def _prefill_rows(text: nn.Module, lm_head: nn.Module, n_kv: int, embeds: torch.Tensor,
                  positions: torch.Tensor, key_valid: torch.Tensor, caches: tuple[list, list],
                  rows: slice) -> torch.Tensor:
    """Run the prompt of `rows` through the decoder, filling the cache; greedy first token.

    embeds: (b, L, C); positions: (3, b, L); key_valid: (b, L) bool. Returns (b,) long.
    """
    b, length, _ = embeds.shape
    cos, sin = text.rotary_emb(embeds, positions)
    causal = torch.ones(length, length, dtype=torch.bool, device=embeds.device).tril()
    # A pad query may see itself, so that no row of the mask is empty (an empty row gives NaN).
    visible = (causal & key_valid[:, None, None, :]) | torch.eye(length, dtype=torch.bool, device=embeds.device)
    mask = _additive(visible, embeds.dtype)
    x = embeds
    for layer, key_cache, value_cache in zip(text.layers, *caches):
        attn = layer.self_attn
        q, k, v = _project_qkv(attn, layer.input_layernorm(x), cos, sin, n_kv)
        key_cache[rows, :, :length] = k
        value_cache[rows, :, :length] = v
        groups = q.shape[1] // n_kv
        o = F.scaled_dot_product_attention(
            q, k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1), attn_mask=mask,
            scale=attn.scaling,
        )
        x = x + attn.o_proj(o.transpose(1, 2).reshape(b, length, -1))
        x = x + layer.mlp(layer.post_attention_layernorm(x))
    return lm_head(text.norm(x[:, -1])).argmax(-1)


@torch.inference_mode()
def prefill(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None, max_new_tokens: int, eos_token_id: int | None, pad_token_id: int,
    tower_layout: TowerLayout = TowerLayout(),
) -> DecodeState:
    """Encode the images, run the prompts and pick each row's first token.

    input_ids, attention_mask: (B, L), left-padded; pixel_values: (sum t*h*w, C*T*P*P);
    image_grid_thw: (n_images, 3), images in row order (both None for a text-only batch).
    tower_layout: how the vision weights are laid out; `TowerLayout(False, 1)` keeps the stock tower's
    kernels (closest to `generate` in bf16), the default is faster (see docs/fast-captioning.md).
    """
    if not is_supported(model):
        raise TypeError(f"fast decoding supports Qwen2.5-VL without sliding windows, not {type(model).__name__}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    text, lm_head, n_kv = _language_parts(model)
    device = text.embed_tokens.weight.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    batch, length = input_ids.shape
    image_token_id = model.config.image_token_id
    visual = model.model.visual

    embeds = text.embed_tokens(input_ids)
    image_slots = input_ids == image_token_id
    n_slots = int(image_slots.sum())
    if pixel_values is None or image_grid_thw is None:
        image_grid_thw = torch.zeros(0, 3, dtype=torch.long)
        n_embeds = 0
    else:
        image_embeds = encode_images(visual, pixel_values.to(device), image_grid_thw, tower_layout)
        n_embeds = image_embeds.shape[0]
    if n_embeds != n_slots:
        raise ValueError(f"{n_slots} image tokens in the prompts but {n_embeds} image embeddings from image_grid_thw")
    if n_slots:
        embeds[image_slots] = image_embeds.to(embeds.dtype)
    positions, next_position = mrope_positions(
        input_ids.cpu(), attention_mask.cpu(), image_grid_thw.cpu(), image_token_id, visual.spatial_merge_size
    )
    positions = positions.to(device)

    # A multiple of 16: attention kernels want the key mask's rows aligned, else they copy it per call.
    cache_len = -(-(length + max_new_tokens) // 16) * 16
    head_dim = text.layers[0].self_attn.head_dim
    shape = (batch, n_kv, cache_len, head_dim)
    caches = ([embeds.new_zeros(shape) for _ in text.layers], [embeds.new_zeros(shape) for _ in text.layers])
    key_valid = torch.zeros(batch, cache_len, dtype=torch.bool, device=device)
    key_valid[:, :length] = attention_mask.bool()

    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    rows_per_chunk = max(1, PREFILL_TOKENS_PER_CHUNK // length)
    for start in range(0, batch, rows_per_chunk):
        rows = slice(start, min(batch, start + rows_per_chunk))
        tokens[rows, 0] = _prefill_rows(text, lm_head, n_kv, embeds[rows], positions[:, rows],
                                        key_valid[rows, :length], caches, rows)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    if eos_token_id is not None:
        finished |= tokens[:, 0] == eos_token_id
    return DecodeState(caches[0], caches[1], key_valid, next_position.to(device), length, tokens, finished)


class _DecodeStep:
    """One greedy decode step over static buffers, so that it can be captured in a CUDA graph.

    Step s (from 0) feeds the token in column s of `state.tokens`, writes its keys and values to
    cache slot `prompt_len + s`, and writes the chosen token to column s + 1.
    """

    def __init__(self, model: nn.Module, state: DecodeState, eos_token_id: int | None, pad_token_id: int):
        self.text, self.lm_head, self.n_kv = _language_parts(model)
        self.state = state
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        device = state.tokens.device
        self.step = torch.zeros(1, dtype=torch.long, device=device)
        self.current = state.tokens[:, 0].clone()

    def __call__(self) -> None:
        s = self.state
        batch = self.current.shape[0]
        x = self.text.embed_tokens(self.current)[:, None]
        position = (s.next_position + self.step)[None, :, None].expand(3, batch, 1)
        cos, sin = self.text.rotary_emb(x, position)
        slot = self.step + s.prompt_len
        s.key_valid.index_fill_(1, slot, True)
        mask = _additive(s.key_valid[:, None, None, :], x.dtype)
        for layer, key_cache, value_cache in zip(self.text.layers, s.key_cache, s.value_cache):
            attn = layer.self_attn
            q, k, v = _project_qkv(attn, layer.input_layernorm(x), cos, sin, self.n_kv)
            key_cache.index_copy_(2, slot, k)
            value_cache.index_copy_(2, slot, v)
            # With one query token, the query heads sharing a key/value head become that head's
            # "query positions": (B, H, 1, D) -> (B, kv_heads, H / kv_heads, D), no key repetition.
            grouped = q.reshape(batch, self.n_kv, -1, attn.head_dim)
            o = F.scaled_dot_product_attention(grouped, key_cache, value_cache, attn_mask=mask, scale=attn.scaling)
            x = x + attn.o_proj(o.reshape(batch, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        chosen = self.lm_head(self.text.norm(x[:, 0])).argmax(-1)
        chosen = torch.where(s.finished, self.pad_token_id, chosen)
        if self.eos_token_id is not None:
            s.finished |= chosen == self.eos_token_id
        s.tokens.index_copy_(1, self.step + 1, chosen[:, None])
        self.current.copy_(chosen)
        self.step += 1


@torch.inference_mode()
def decode(model: nn.Module, state: DecodeState, eos_token_id: int | None, pad_token_id: int,
           use_cuda_graph: bool | None = None) -> torch.Tensor:
    """Greedy tokens after prefill: (B, max_new_tokens) long, pad after a row's eos.

    use_cuda_graph: capture the step once and replay it (default: on CUDA devices).
    """
    steps = state.tokens.shape[1] - 1
    step = _DecodeStep(model, state, eos_token_id, pad_token_id)
    if use_cuda_graph is None:
        use_cuda_graph = state.tokens.is_cuda
    done = 0

    def all_finished() -> bool:
        return eos_token_id is not None and bool(state.finished.all())

    if not use_cuda_graph:
        while done < steps and not all_finished():
            step()
            done += 1
        return state.tokens

    # Two eager steps on a side stream (lazy library initialisation happens outside the capture),
    # then the graph; capturing records kernels without running them.
    warmup = min(2, steps)
    side = warmup_stream(state.tokens.device)
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(side)
    done = warmup
    if done < steps:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        while done < steps:
            if done % EOS_CHECK_EVERY == 0 and all_finished():
                break
            graph.replay()
            done += 1
    return state.tokens


def greedy_generate(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor | None,
    image_grid_thw: torch.Tensor | None, max_new_tokens: int, eos_token_id: int | None, pad_token_id: int,
    tower_layout: TowerLayout = TowerLayout(),
) -> torch.LongTensor:
    """Greedy captions for a left-padded batch of image prompts.

    input_ids, attention_mask: (B, L); pixel_values: (sum t*h*w, C*T*P*P); image_grid_thw:
    (n_images, 3); both None for text-only prompts. Returns the new tokens only,
    (B, max_new_tokens), pad_token_id after each row's eos (eos_token_id None: never stop early).
    tower_layout: see `prefill`.
    """
    state = prefill(model, input_ids, attention_mask, pixel_values, image_grid_thw, max_new_tokens,
                    eos_token_id, pad_token_id, tower_layout)
    return decode(model, state, eos_token_id, pad_token_id)
