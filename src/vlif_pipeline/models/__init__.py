"""``build_model(name, data, params)`` for every recommender the ``train`` stage knows
(``vlif_pipeline.registry.MODELS``), each module imported only when its model is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlif_pipeline.models.base import Recommender
    from vlif_pipeline.training.data import TrainData

from vlif_pipeline.registry import MODELS


def model_class(name: str) -> type[Recommender]:
    """The class registered under ``name``; a ValueError lists the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    entry = MODELS[name]
    return getattr(importlib.import_module(entry.module), entry.cls)


def build_model(name: str, data: TrainData, params: dict[str, Any]) -> Recommender:
    """Instantiate model ``name`` on ``data``'s device with hyperparameters ``params``."""
    return model_class(name)(data, params).to(data.device)
