"""Most-popular baseline: every user gets the items ranked by their training interaction count."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from vlif_pipeline.models.base import Recommender
from vlif_pipeline.registry import MODELS

if TYPE_CHECKING:
    from vlif_pipeline.training.data import TrainData


class Popularity(Recommender):
    """No parameters: scores (B, I) are the item counts in the train split, the same for every user."""

    DEFAULTS: ClassVar[dict[str, Any]] = MODELS["popularity"].defaults
    trainable: ClassVar[bool] = False

    def __init__(self, data: TrainData, params: dict[str, Any]) -> None:
        super().__init__(data, params)
        counts = np.asarray(data.train.sum(axis=0), dtype=np.float32).ravel()
        self.register_buffer("counts", torch.from_numpy(counts).to(data.device))

    def score_users(self, users: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        scores = self.counts.expand(users.shape[0], -1)
        return scores.clone() if out is None else out.copy_(scores)
