"""Choose a model's grid point on validation only (``report sweep``): ``sweep/{model}.json`` and ``.md``.

Every point's validation Recall@20 is averaged over its seeds; the best mean wins, ties going to the
point that comes first in the grid. Test figures are read and shown beside each point, and never
used: the selection below looks at the validation figures alone (a test permutes the test figures
and checks that the choice stays). The toolbox this project is measured against picks the best
*test* score, which overstates every model it tunes.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from vlif_pipeline.io import StageError
from vlif_pipeline.sweep import name

SELECT_ON = ("valid", "recall", 20)
SHOWN = (("valid", "recall", 20), ("test", "recall", 20), ("test", "ndcg", 20))


def spread(values: list[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (0 for one value) and the values themselves."""
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": values}


def summarise(plan: list[dict[str, Any]], read: Any) -> list[dict[str, Any]]:
    """Each point of ``plan`` (``{"settings", "runs": [metrics.json paths]}``, grid order) with the
    spread of each shown figure over its runs; ``read(path, split, name, k)`` reads one figure."""
    points = []
    for index, entry in enumerate(plan):
        if not entry["runs"]:
            raise StageError(f"grid point {entry['settings']} has no runs")
        figures = {
            f"{split} {metric}@{k}": spread([read(Path(path), split, metric, k) for path in entry["runs"]])
            for split, metric, k in SHOWN
        }
        points.append({"index": index, "name": name(entry["settings"]), "settings": entry["settings"],
                       "runs": entry["runs"], "figures": figures})
    return points


def choose(points: list[dict[str, Any]]) -> dict[str, Any]:
    """The point with the best mean validation figure; the first in grid order among equals."""
    split, metric, k = SELECT_ON
    key = f"{split} {metric}@{k}"
    return max(points, key=lambda point: (point["figures"][key]["mean"], -point["index"]))


def _cell(figure: dict[str, Any]) -> str:
    text = f"{figure['mean']:.4f}"
    return text if len(figure["values"]) == 1 else f"{text} ± {figure['std']:.4f}"


def markdown(model: str, dataset: str, points: list[dict[str, Any]], chosen: dict[str, Any]) -> str:
    """Every point with its figures; the chosen one marked. Test is shown, never used."""
    keys = list(points[0]["settings"]) if points else []
    header = ["", *keys, *(f"{split} {metric}@{k}" for split, metric, k in SHOWN)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for point in points:
        mark = "**chosen**" if point is chosen else ""
        cells = [str(point["settings"][key]) for key in keys] + [_cell(f) for f in point["figures"].values()]
        lines.append("| " + " | ".join([mark, *cells]) + " |")
    runs = len(points[0]["runs"]) if points else 0
    intro = (
        f"# {dataset}: {model} sweep\n\n{len(points)} grid points, {runs} run(s) each (seeds); chosen by mean "
        "validation Recall@20, ties to the earlier point. Test figures are shown and never used.\n\n"
    )
    return intro + "\n".join(lines) + "\n"
