"""Model registry: ``build_model(name, data, params)`` for every recommender the ``train`` stage knows.

VLIF is imported lazily (its module is the largest and pulls in the fusion code).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlif_pipeline.models.base import Recommender
    from vlif_pipeline.training.data import TrainData

MODELS: dict[str, tuple[str, str]] = {
    "popularity": ("vlif_pipeline.models.popularity", "Popularity"),
    "bpr": ("vlif_pipeline.models.bpr", "BPRMF"),
    "lightgcn": ("vlif_pipeline.models.lightgcn", "LightGCN"),
    "freedom": ("vlif_pipeline.models.freedom", "FREEDOM"),
    "vlif": ("vlif_pipeline.models.vlif", "VLIF"),
}


def model_class(name: str) -> type[Recommender]:
    """The class registered under ``name``; a ValueError lists the known names."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    module, cls = MODELS[name]
    return getattr(importlib.import_module(module), cls)


def build_model(name: str, data: TrainData, params: dict[str, Any]) -> Recommender:
    """Instantiate model ``name`` on ``data``'s device with hyperparameters ``params``."""
    return model_class(name)(data, params).to(data.device)
