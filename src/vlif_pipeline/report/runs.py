"""Reading what training runs wrote (``runs/{run}/metrics.json``) and the sweep selections that
stand for a model's chosen runs, for every report; a bad file is one ``StageError`` naming it."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from vlif_pipeline.config import ConfigError, parse_run_id
from vlif_pipeline.io import StageError


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; anything else is a ``StageError`` naming the file."""
    try:
        value = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise StageError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise StageError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise StageError(f"{path}: a JSON {type(value).__name__}, not an object")
    return value


def metric(run_metrics: dict[str, Any], split: str, name: str, k: int, path: str | Path = "") -> float:
    """One figure from a run's metrics.json (`{split: {"recall@20": ...}}`), a finite number."""
    key = f"{name}@{k}"
    try:
        value = run_metrics[split][key]
    except (KeyError, TypeError):
        raise StageError(f"{path}: no {split} {key} in the run's metrics") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StageError(f"{path}: {split} {key} is {value!r}, not a finite number")
    return float(value)


def run_parts(path: Path) -> dict[str, str | None]:
    """Model, variant and fusion of the run whose ``runs/{run}/metrics.json`` is ``path``."""
    try:
        return parse_run_id(path.parent.name)
    except ConfigError as err:
        raise StageError(f"{path}: {err}") from None


def is_selection(path: Path) -> bool:
    """Whether ``path`` is a sweep selection (``sweep/{model}.json``) rather than a run's metrics."""
    return path.parent.name == "sweep"


def expand_selections(paths: list[Path]) -> list[Path]:
    """Run metrics files, each sweep selection replaced by the runs of its chosen point."""
    return [Path(run) for path in paths for run in (
        read_json(path)["chosen"]["runs"] if is_selection(path) else [path]
    )]


def fmt(value: float) -> str:
    return f"{value:.4f}"


def rows(
    run_paths: list[Path], columns: tuple[tuple[str, int], ...]
) -> list[tuple[dict[str, str | None], list[str], list[float], str]]:
    """One row per (model, variant, fusion), in first-seen order: the runs of a row are its seeds.

    Each row: the run's parts, its test figures as text (mean +/- sample std over seeds when there
    are several), the means (for bold) and the best epochs.
    """
    groups: dict[tuple[Any, ...], list[Path]] = {}
    for path in expand_selections(run_paths):
        parts = run_parts(path)
        groups.setdefault((parts["model"], parts["variant"], parts["fusion"]), []).append(path)
    rows = []
    for paths in groups.values():
        runs = [read_json(path) for path in paths]
        cells, means = [], []
        for name, k in columns:
            values = [metric(run, "test", name, k, path) for run, path in zip(runs, paths, strict=True)]
            means.append(statistics.fmean(values))
            cells.append(fmt(means[-1]) if len(values) == 1 else f"{fmt(means[-1])} ± {fmt(statistics.stdev(values))}")
        epochs = ", ".join(str(run.get("best_epoch")) for run in runs)
        rows.append((run_parts(paths[0]), cells, means, epochs))
    return rows
