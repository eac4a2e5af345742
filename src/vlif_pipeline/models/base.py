"""The interface every recommender implements, so one trainer and one evaluator serve them all."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from vlif_pipeline.training.data import TrainData


class Recommender(torch.nn.Module, ABC):
    """Base class: BPR-style training on (user, positive, negative) triples and full-ranking scores.

    Subclasses declare their hyperparameters with defaults in ``DEFAULTS``; the constructor merges
    the given ``params`` over them (a key the model does not know is an error, never ignored) into
    ``self.hparams``. ``trainable = False`` marks models without parameters (evaluated once).

    ``graphable = True`` declares that ``loss`` is a pure function of the parameters and the batch:
    fixed shapes for a fixed batch size, no host synchronisation, no Python-side state. On CUDA the
    trainer then captures whole training steps in a CUDA graph (``training/step.py``).
    ``_cache`` holds what :meth:`prepare_eval` computed; switching to training mode drops it, since
    captured steps replay no Python code that could invalidate it.
    """

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    trainable: ClassVar[bool] = True
    graphable: bool = False

    def __init__(self, data: TrainData, params: dict[str, Any]) -> None:
        super().__init__()
        unknown = sorted(set(params) - set(self.DEFAULTS))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown parameter(s) {unknown}; known: {sorted(self.DEFAULTS)}"
            )
        self.hparams: dict[str, Any] = {**self.DEFAULTS, **params}
        self.n_users = data.n_users
        self.n_items = data.n_items
        self._cache: Any = None

    def train(self, mode: bool = True) -> Recommender:
        """Set the training mode; entering training drops the evaluation cache (it goes stale)."""
        if mode:
            self._cache = None
        return super().train(mode)

    def loss(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss parts for a batch of triples, each (B,) int64: key ``loss`` is the total to minimise.

        Trainable models override this; a model with ``trainable = False`` is only ever evaluated.
        """
        raise TypeError(f"{type(self).__name__} has no parameters to train (trainable = False)")

    @abstractmethod
    def score_users(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Scores (B, I) of every item for users (B,), which the evaluator masks in place.

        Written into ``out`` (B, I) when given: the evaluator reuses one buffer, because a fresh
        tensor of (B, I) floats per batch can cost more in page faults than the product itself.
        """

    def prepare_eval(self) -> None:
        """Cache whatever scoring needs (propagated embeddings); called under no_grad before evaluating."""

    def start_epoch(self) -> None:
        """Per-epoch work before training batches (e.g. resampling a pruned graph)."""


def dot_scores(user_emb: torch.Tensor, item_emb: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """user_emb (B, d) @ item_emb (I, d)^T -> (B, I), into ``out`` when given."""
    return torch.mm(user_emb, item_emb.T, out=out)


def bpr_loss(pos_scores: torch.Tensor, neg_scores: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(pos - neg) over the batch; inputs (B,)."""
    return F.softplus(neg_scores - pos_scores).mean()


def l2_penalty(*embeddings: torch.Tensor) -> torch.Tensor:
    """Half the squared L2 norm of the batch's embeddings, divided by the batch size (B = rows of the first)."""
    total = sum(emb.pow(2).sum() for emb in embeddings)
    return 0.5 * total / embeddings[0].shape[0]


def xavier_embedding(n: int, dim: int) -> torch.nn.Embedding:
    """An (n, dim) embedding table with Xavier-uniform initialisation (the models' common init)."""
    table = torch.nn.Embedding(n, dim)
    torch.nn.init.xavier_uniform_(table.weight)
    return table


class _RowNorm(torch.autograd.Function):
    """|x| over the last dim, keepdim; backward x g / |x| (0 for a zero row), without autograd's masked pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        ctx.save_for_backward(x, norm)
        return norm

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x, norm = ctx.saved_tensors
        return x * torch.where(norm > 0, grad / norm, 0.0)  # a zero row: x is 0, so is its gradient


class _NormalizeRows(torch.autograd.Function):
    """x / max(|x|, eps) over the last dim, as ``F.normalize``, with a three-pass backward.

    Autograd through ``F.normalize`` makes about seven passes over (n, d) in the backward (division,
    norm and clamp gradients, a masked fill, a sum); here (g - y (g . y)) / max(|x|, eps), with the
    projection dropped for rows the clamp held.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:  # type: ignore[override]
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        denominator = norm.clamp_min(eps)
        y = x / denominator
        ctx.save_for_backward(y, denominator, norm >= eps)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        y, denominator, normalised = ctx.saved_tensors
        along = (grad * y).sum(-1, keepdim=True) * normalised
        return torch.addcmul(grad, y, along, value=-1.0).div_(denominator), None


def row_norm(x: torch.Tensor) -> torch.Tensor:
    """Euclidean norm of each row: x (*, d) -> (*, 1), as ``x.norm(dim=-1, keepdim=True)``."""
    return _RowNorm.apply(x)


def normalize_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Each row scaled to unit norm: x (*, d) -> (*, d), as ``F.normalize(x, dim=-1, eps=eps)``."""
    return _NormalizeRows.apply(x, eps)
