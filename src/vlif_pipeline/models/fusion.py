"""The information-aware fusion of VLIF (paper section 2.3): synergy, redundancy, unique vision.

Every module here maps each node's own inputs to that node's outputs, with no interaction between
nodes; VLIF relies on this to run them only for the nodes a training batch needs. Shapes use n for
the number of nodes, d for the embedding width and T = L + 1 for the per-layer tokens of a modality.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from vlif_pipeline.models import native
from vlif_pipeline.models.base import normalize_rows, row_norm

if TYPE_CHECKING:
    from vlif_pipeline.models.native import CrossBlockKernel, InfoNceKernel, RedundancyKernel


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention of ONE query per sequence over its T keys.

    query (*, d), keys and values (*, T, d), broadcast over the leading dims; returns (*, d). Written
    with broadcast products rather than batched matmuls: with T = 3 and a few thousand sequences, a
    bmm per (sequence, head) would be all overhead.
    """
    head_dim = query.shape[-1] // n_heads
    q = query.unflatten(-1, (n_heads, head_dim)).unsqueeze(-3)  # (*, 1, H, c)
    k = keys.unflatten(-1, (n_heads, head_dim))  # (*, T, H, c)
    v = values.unflatten(-1, (n_heads, head_dim))
    weights = torch.softmax((q * k).sum(-1) / math.sqrt(head_dim), dim=-2)  # (*, T, H)
    return (weights.unsqueeze(-1) * v).sum(-3).flatten(-2)


class _PreNormBlock(nn.Module):
    """Shared parts of a pre-LN transformer block with LayerScale gains on both residual branches.

    The residual stream carries graph embeddings of norm ~1, while a LayerNorm'd vector has norm
    ~sqrt(d); gains initialised at ``layer_scale`` keep the branches' first updates on the stream's
    scale, so the fused parts start comparable to t and v' (see docs/model.md).
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, layer_scale: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"embedding_dim {dim} is not divisible by n_heads {n_heads}")
        self.n_heads = n_heads
        self.norm_attn = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.gain_attn = nn.Parameter(torch.full((dim,), layer_scale))
        self.gain_ffn = nn.Parameter(torch.full((dim,), layer_scale))

    def finish(self, stream: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """Attention residual then feed-forward residual; attended (*, d) -> (*, d).

        stream: (*, d), or one row (1, d) that every row shares (the redundancy encoder's CLS).
        The LayerScale gains are folded into the weights of the branches' last linear layers
        (64 x 64 products) rather than multiplied into their (*, d) outputs, and a shared stream
        row into the bias: fewer passes over the node tensors forward and backward, same values.
        """
        weight, bias = self.out.weight * self.gain_attn[:, None], self.out.bias * self.gain_attn
        if stream.shape[0] == 1:
            x = F.linear(attended, weight, bias + stream[0])
        else:
            x = stream + F.linear(attended, weight, bias)
        inner, act, outer = self.ffn
        hidden = act(inner(self.norm_ffn(x)))
        return x + F.linear(hidden, outer.weight * self.gain_ffn[:, None], outer.bias * self.gain_ffn)

    def keys_values(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (*, d) each of normed tokens (*, d), as two contiguous products.

        One product into (*, 2d) halved by ``chunk`` leaves strided halves that the attention's
        broadcasts and their gradients copy again.
        """
        d = normed.shape[-1]
        w, b = self.key_value.weight, self.key_value.bias
        return F.linear(normed, w[:d], b[:d]), F.linear(normed, w[d:], b[d:])


class CrossModalBlock(_PreNormBlock):
    """One cross-modal transformer block: a node's query attends over the node's tokens of the other modality.

    query (n, d) is both the attention query and the residual stream; tokens (n, T, d); returns (n, d).
    ``kernel``, when VLIF sets it on a CPU, computes the same block on float32 CPU tensors in one
    fused pass forward and one backward (models/native.py).
    """

    kernel: CrossBlockKernel | None = None

    def forward(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel
        if kernel is not None and kernel.accepts(query, tokens):
            run_kernel = functools.partial(kernel, self)
            if kernel.wins(run_kernel, self._forward_torch, [query, tokens], list(self.parameters())):
                return run_kernel(query, tokens)
        return self._forward_torch(query, tokens)

    def _forward_torch(self, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        q = self.query(self.norm_attn(query))
        keys, values = self.keys_values(self.norm_attn(tokens))
        return self.finish(query, attend(q, keys, values, self.n_heads))


class SynergyEstimator(nn.Module):
    """Cross-modal synergy estimation (eqs. 7-8): s = (h_{v->t} + h_{t->v}) / 2, on the inputs' scale.

    h_{v->t}: the node's aggregated vision embedding queries its T text tokens (the per-layer
    user-item graph outputs), and symmetrically for h_{t->v}; each direction has its own block.
    s keeps the direction of the mean and takes the norm (|v| + |t|) / 2 of its inputs. Why: t and
    v' are bounded (sums of propagated unit vectors), while the blocks' learned gains let the raw
    mean grow without bound; unbounded scores let BPR fit the training pairs within a few epochs
    (on the demo, validation Recall@20 peaked at epoch 7 and fell; with the rescaling it rises
    for about 30 epochs, 0.210 -> 0.251 at lambda 0.1). The contrastive losses use h_{v->t} and
    h_{t->v} through cosines, so the rescaling does not change them.
    """

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, layer_scale: float, rescale: bool = True) -> None:
        super().__init__()
        self.vision_to_text = CrossModalBlock(dim, n_heads, ffn_dim, layer_scale)
        self.text_to_vision = CrossModalBlock(dim, n_heads, ffn_dim, layer_scale)
        self.rescale = rescale

    def forward(
        self, v: torch.Tensor, t: torch.Tensor, v_tokens: torch.Tensor, t_tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """v, t (n, d); v_tokens, t_tokens (n, T, d) -> s, h_{v->t}, h_{t->v}, each (n, d)."""
        h_vt = self.vision_to_text(v, t_tokens)
        h_tv = self.text_to_vision(t, v_tokens)
        mean = (h_vt + h_tv) / 2
        if not self.rescale:  # eq. 8 as written, as the released code has it
            return mean, h_vt, h_tv
        scale = (row_norm(v) + row_norm(t)) / 2
        return mean * (scale / row_norm(mean).clamp_min(1e-12)), h_vt, h_tv


class RedundancyEncoder(_PreNormBlock):
    """Transformer-based redundancy estimation (eqs. 9-11): h, h_v, h_t and r = their mean.

    The shared encoder F is one pre-LN transformer encoder layer over [CLS, vision, text] (modality
    embeddings mark the two positions; MASK_v and MASK_t, learned, replace a removed modality),
    read out at CLS; g is a linear projection. With a single layer, the outputs at the other two
    positions never reach CLS, so only CLS's row is computed. Keys and values of the real tokens are
    the same in all three variants and those of CLS and the masks are the same for every node, so
    each is projected once, and each variant's attention weights CLS's, a vision and a text value
    without materialising (3, n, 3, d) sequences. As g is linear, r = g(mean of the F outputs):
    callers that need the three views only for a few rows (the contrastive loss's) project
    :meth:`encode`'s output there and its mean everywhere, a third of g's work. ``kernel``, when VLIF
    sets it on a CPU, computes the per-node part on float32 CPU tensors in one fused pass forward
    and one backward (models/native.py).
    """

    kernel: RedundancyKernel | None = None

    def __init__(self, dim: int, n_heads: int, ffn_dim: int, layer_scale: float) -> None:
        super().__init__(dim, n_heads, ffn_dim, layer_scale)
        self.cls = nn.Parameter(torch.empty(1, dim))
        self.masks = nn.Parameter(torch.empty(2, dim))  # MASK_v, MASK_t
        self.modality = nn.Parameter(torch.empty(2, dim))  # vision position, text position
        self.project = nn.Linear(dim, dim)
        for table in (self.cls, self.masks, self.modality):
            nn.init.xavier_uniform_(table)

    def forward(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v, t (n, d) -> stacked (3, n, d): h = g(F([v, t])), h_v = g(F([v, MASK_t])), h_t = g(F([MASK_v, t]))."""
        return self.project(self.encode(v, t))

    def encode(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """v, t (n, d) -> stacked (3, n, d): F's CLS outputs for [v, t], [v, MASK_t], [MASK_v, t], before g."""
        kernel = self.kernel
        if kernel is not None and kernel.accepts(v, t):
            run_kernel = functools.partial(self._encode_kernel, kernel)
            if kernel.wins(run_kernel, self._encode_torch, [v, t], list(self.parameters())):
                return run_kernel(v, t)
        return self._encode_torch(v, t)

    def _fixed(self, dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What every node shares: CLS's query (H, c), and the scaled scores (3, H) and values
        (3, H, c) of CLS, MASK_v and MASK_t."""
        heads = (self.n_heads, dim // self.n_heads)
        query = self.query(self.norm_attn(self.cls)).view(heads)  # (H, c)
        fixed = self.norm_attn(torch.cat([self.cls, self.masks + self.modality]))  # (3, d): CLS, MASK_v, MASK_t
        fixed_keys, fixed_values = self.key_value(fixed).unflatten(-1, (2, *heads)).unbind(-3)  # (3, H, c)
        return query, (fixed_keys * query).sum(-1) * heads[1] ** -0.5, fixed_values

    def _encode_kernel(self, kernel: RedundancyKernel, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        query, fixed_scores, fixed_values = self._fixed(v.shape[1])
        real = torch.stack([v, t], dim=1) + self.modality  # (n, 2, d): vision, text
        return kernel(self, real, query.flatten(), fixed_scores, fixed_values.flatten(1))

    def _encode_torch(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, dim = v.shape
        heads = (self.n_heads, dim // self.n_heads)
        query, fixed_scores, fixed_values = self._fixed(dim)
        real = torch.stack([v, t], dim=1) + self.modality  # (n, 2, d): vision, text
        real_keys, real_values = (x.unflatten(-1, heads) for x in self.keys_values(self.norm_attn(real)))
        # unbind, not indexing: one stack in the backward instead of a zero-filled (n, 2, H, c) per use
        real_scores = ((real_keys * query).sum(-1) * heads[1] ** -0.5).unbind(1)  # 2 x (n, H): vision, text
        real_values = real_values.unbind(1)  # 2 x (n, H, c)
        fixed_scores = fixed_scores.unsqueeze(1).expand(3, n, heads[0])  # (3, n, H)
        attended = []
        for vision_real, text_real in ((True, True), (True, False), (False, True)):
            scores = torch.stack(
                [
                    fixed_scores[0],
                    real_scores[0] if vision_real else fixed_scores[1],
                    real_scores[1] if text_real else fixed_scores[2],
                ],
                dim=1,
            )  # (n, 3, H)
            weights = torch.softmax(scores, dim=1).unsqueeze(-1)  # (n, 3, H, 1)
            mixed = (
                weights[:, 0] * fixed_values[0]
                + weights[:, 1] * (real_values[0] if vision_real else fixed_values[1])
                + weights[:, 2] * (real_values[1] if text_real else fixed_values[2])
            )  # (n, H, c)
            attended.append(mixed.flatten(1))
        return self.finish(self.cls, torch.stack(attended))


def remove_component(x: torch.Tensor, r: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x - (x.r / |r|^2) r row by row (eq. 12): the part of x orthogonal to r; x, r (n, d) -> (n, d)."""
    coef = (x * r).sum(-1, keepdim=True) / (r * r).sum(-1, keepdim=True).clamp_min(eps)
    return x - coef * r


def first_occurrences(ids: torch.Tensor) -> torch.Tensor:
    """(n,) bool: True at the first position of each distinct value of ``ids`` (n,).

    A fixed-shape stand-in for ``torch.unique``, whose data-dependent size would force a host
    synchronisation and rule out CUDA-graph capture of a training step.
    """
    ordered, order = torch.sort(ids, stable=True)
    first = torch.ones_like(ids, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]
    return torch.empty_like(first).scatter_(0, order, first)


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE on cosine similarity: row k of a and of b are positives, other rows negatives.

    a, b (n, d) -> scalar; the mean of the a->b and b->a cross-entropies over the rows where ``keep``
    (n,) bool is True (all rows when None); dropped rows are neither anchors nor negatives, so the
    loss equals the plain loss of ``a[keep]``, ``b[keep]``. Cosines are at most 1, so
    exp((cos - 1) / temperature) lies in [exp(-2 / temperature), 1]: one exponential of the (n, n)
    logits serves the row and the column log-sum-exp, with neither overflow nor (for temperature
    >= 0.025) underflow.
    """
    a = normalize_rows(a)
    b = normalize_rows(b)
    weight = None if keep is None else keep.to(a.dtype)
    row_sums, col_sums = _exp_sums(a, b, weight, temperature)
    positives = ((a * b).sum(-1) - 1) / temperature  # (n,), the shifted diagonal logits
    per_row = (row_sums.log() + col_sums.log()) / 2 - positives  # a dropped row's terms are finite
    return per_row.mean() if weight is None else (per_row * weight).sum() / weight.sum()


def info_nce_all(
    a: torch.Tensor, b: torch.Tensor, targets: torch.Tensor, temperature: float, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE of each row of ``a`` (n, d) against every row of ``b`` (m, d): row k's positive is
    ``b[targets[k]]``, all other rows of b its negatives (the released code's all-items negatives).

    One direction (a -> b); the mean over the rows where ``keep`` (n,) is True. (n, m) logits: m is
    the item count, never the users'.
    """
    logits = normalize_rows(a) @ normalize_rows(b).T / temperature
    losses = F.cross_entropy(logits, targets, reduction="none")
    if keep is None:
        return losses.mean()
    weight = keep.to(losses.dtype)
    return (losses * weight).sum() / weight.sum()


def _exp_sums(
    a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row sums S w and column sums w^T S (n,) of S = exp((a b^T - 1) / temperature) for a, b (n, d);
    w = ``weight`` (n,), or ones. On float32 CPU tensors by the C kernel (models/native.py)."""
    if a.device.type == "cpu":  # never build a kernel for a GPU run; accepts() checks the rest
        kernel = native.info_nce_kernel(a.shape[1])
        if kernel is not None and kernel.accepts(a, b):
            w = a.new_ones(a.shape[0]) if weight is None else weight
            run_kernel = functools.partial(_kernel_exp_sums, kernel, w, temperature)
            if kernel.wins(run_kernel, functools.partial(_torch_exp_sums, w, temperature), [a, b]):
                return run_kernel(a, b)
    return _torch_exp_sums(weight, temperature, a, b)


def _kernel_exp_sums(
    kernel: InfoNceKernel, weight: torch.Tensor, temperature: float, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    return kernel(a, b, weight, temperature)


def _torch_exp_sums(
    weight: torch.Tensor | None, temperature: float, a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    # (cos - 1) / temperature by one GEMM (alpha, and a broadcast shift as its input), then exp in
    # place: two passes over the (n, n) matrix instead of four
    shift = a.new_full((1, 1), -1.0 / temperature)  # a fill, not a host copy: safe in a CUDA graph
    shifted = torch.addmm(shift, a, b.T, alpha=1.0 / temperature).exp_()  # (n, n)
    if weight is None:
        return shifted.sum(1), shifted.sum(0)
    # sums over kept columns (a -> b) and kept rows (b -> a) as matrix-vector products: no masked copy
    return shifted @ weight, weight @ shifted
