"""The paper-style Markdown tables: Table 1 (VLIF against the baselines) and Table 2 (ablation)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from vlif_pipeline.io import StageError
from vlif_pipeline.registry import FUSIONS, MODELS, VARIANTS
from vlif_pipeline.report.runs import rows as run_rows
from vlif_pipeline.report.runs import run_parts
from vlif_pipeline.report.visual import describe

TABLE_COLUMNS = (("recall", 10), ("recall", 20), ("ndcg", 10), ("ndcg", 20))
ABLATION_COLUMNS = (("recall", 10), ("recall", 20), ("ndcg", 20))


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _bold_best(rows: list[list[str]], values: list[list[float]], first_col: int) -> None:
    for col in range(len(values[0])):
        best = max(range(len(values)), key=lambda r: values[r][col])
        rows[best][first_col + col] = f"**{rows[best][first_col + col]}**"


def build_table(run_paths: list[Path], dataset: str, visual: dict[str, Any] | None = None) -> str:
    """Paper Table 1 layout: one row per model, test R@10, R@20, N@10, N@20; best in bold.

    A row with several runs (seeds of a swept model's chosen point) shows mean +/- std."""
    rows, values = [], []
    for parts, cells, means, epochs in run_rows(run_paths, TABLE_COLUMNS):
        label = MODELS[str(parts["model"])].label
        details = [VARIANTS[parts["variant"]].label] if parts["variant"] else []
        if parts["point"]:  # a swept model at its chosen point (its seeds are the row's runs)
            details.append(re.sub(r",?seed=\d+$", "", parts["point"]))
        label += f" ({', '.join(filter(None, details))})" if any(details) else ""
        rows.append([label, *cells, epochs])
        values.append(means)
    _bold_best(rows, values, 1)
    header = ["Model", "R@10", "R@20", "N@10", "N@20", "best epoch"]
    title = f"# {dataset}: VLIF against the baselines\n\nTest metrics at the best validation epoch (Recall@20).\n\n"
    footer = "" if visual is None else f"\n{describe(visual)}\n"
    return title + markdown(header, rows) + footer


def build_ablation(run_paths: list[Path], dataset: str) -> str:
    """Paper Table 2 layout: image-feature variants (PID fusion) and fusion variants (title captions)."""
    for path in run_paths:
        if run_parts(path)["model"] != "vlif":
            raise StageError(f"{path}: the ablation compares VLIF runs only, got '{run_parts(path)['model']}'")
    rows, values = [], []
    for parts, cells, means, _ in run_rows(run_paths, ABLATION_COLUMNS):
        if parts["fusion"] == "pid":
            module, approach = "Image Feature", VARIANTS[str(parts["variant"])].label
        else:
            module, approach = "Multimodal Fusion", FUSIONS[str(parts["fusion"])]
        if parts["fusion"] == "pid" and parts["variant"] == "vlm_title":
            module, approach = "VLIF", "title captions + PID fusion"
        rows.append([module, approach, *cells])
        values.append(means)
    _bold_best(rows, values, 2)
    header = ["Module", "Approach", "R@10", "R@20", "N@20"]
    title = f"# {dataset}: ablation\n\nTest metrics at the best validation epoch (Recall@20).\n\n"
    return title + markdown(header, rows)
