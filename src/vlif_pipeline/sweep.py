"""Hyperparameter grids (the config's ``sweep`` section): the points of a model's grid, the runs that
train them, and the names that make each run its own folder and its own Snakemake job.

A grid is ``{setting: [values, ...]}`` per model over the model's parameters and the trainer's
settings; its points are the Cartesian product in the order the settings are written, and
``sweep.seeds`` repeats each point once per seed. A run's name carries its point's values
(``n_layers=2,reg_weight=0.001,seed=1``), so adding a value to a list adds runs without renaming
any, and removing one leaves the others as they were.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

SEEDS = "seeds"
MAX_NAME = 80  # longer point names keep their start and end in a digest (file systems allow 255)


def grid(cfg: dict[str, Any], model: str) -> dict[str, list[Any]] | None:
    """``model``'s grid in the dataset's merged configuration, or None when it is not swept."""
    section = cfg.get("sweep") or {}
    return section[model] if model in section else None


def seeds(cfg: dict[str, Any]) -> list[int] | None:
    return (cfg.get("sweep") or {}).get(SEEDS)


def points(cfg: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """The settings of each grid point, in grid order; [] when ``model`` is not swept."""
    settings = grid(cfg, model)
    if settings is None:
        return []
    keys = list(settings)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*(settings[k] for k in keys))]


def with_seeds(cfg: dict[str, Any], point: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of one grid point: the point itself, or once per seed of ``sweep.seeds``."""
    return [point if seed is None else {**point, "seed": seed} for seed in seeds(cfg) or [None]]


def runs(cfg: dict[str, Any], model: str) -> list[dict[str, Any]]:
    """Each run of the sweep, in grid order: a point's settings, and ``seed`` when ``sweep.seeds`` is set."""
    return [run for point in points(cfg, model) for run in with_seeds(cfg, point)]


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def name(settings: dict[str, Any]) -> str:
    """A readable, file-name-safe name of a run's settings: ``key=value`` pairs in grid order."""
    text = ",".join(f"{key}={_text(value)}" for key, value in settings.items())
    if len(text) <= MAX_NAME:
        return text
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    return f"{text[: MAX_NAME - 11]}~{digest}"


def point_of(settings: dict[str, Any]) -> dict[str, Any]:
    """A run's settings without its seed: the grid point it repeats."""
    return {key: value for key, value in settings.items() if key != "seed"}


def settings_of(cfg: dict[str, Any], model: str, run_name: str) -> dict[str, Any] | None:
    """The settings of the sweep run named ``run_name``, or None when the grid has no such run."""
    return next((settings for settings in runs(cfg, model) if name(settings) == run_name), None)
