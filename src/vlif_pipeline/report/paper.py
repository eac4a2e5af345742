"""``results/{ds}/paper.md``: this pipeline's Table 1 and Table 2 rows beside the figures the VLIF
paper published for the same dataset (``published.yaml``), each with the relative difference.

A row is compared with the paper's row of the same meaning and with nothing else: FREEDOM on the
CNN features (the published FREEDOM row's input), VLIF with title-guided captions, the ablation's
feature and fusion rows; everything else, and any dataset the paper did not use, says "not published".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from vlif_pipeline.registry import FUSIONS, MODELS, VARIANTS
from vlif_pipeline.report.runs import fmt, rows
from vlif_pipeline.report.tables import ABLATION_COLUMNS, TABLE_COLUMNS, markdown

PUBLISHED: dict[str, Any] = yaml.safe_load(Path(__file__).with_name("published.yaml").read_text())
TITLE_VARIANTS = {name for name, variant in VARIANTS.items() if variant.prompt in ("title_cot", "released")}
NOT_PUBLISHED = "not published"


def table1_row(parts: dict[str, str | None]) -> str | None:
    """The paper's Table 1 row a run stands for, or None."""
    model, variant = str(parts["model"]), parts["variant"]
    if model == "freedom":
        return "FREEDOM" if variant == "original" else None
    if model == "vlif":
        return "VLIF" if variant in TITLE_VARIANTS and parts["fusion"] == "pid" else None
    return MODELS[model].label if model in ("bpr", "lightgcn") else None


def table2_row(parts: dict[str, str | None]) -> str | None:
    """The paper's Table 2 row a VLIF run stands for, or None."""
    if parts["fusion"] != "pid":
        return FUSIONS[str(parts["fusion"])]
    if parts["variant"] in TITLE_VARIANTS:
        return "VLIF"
    return VARIANTS[str(parts["variant"])].label if parts["variant"] in ("original", "vlm_plain") else None


def _label(parts: dict[str, str | None]) -> str:
    label = MODELS[str(parts["model"])].label
    details = [VARIANTS[parts["variant"]].label] if parts["variant"] else []
    if parts["model"] == "vlif" and parts["fusion"] != "pid":
        details.append(FUSIONS[str(parts["fusion"])])
    return f"{label} ({', '.join(details)})" if details else label


def compare(
    run_paths: list[Path], columns: tuple[tuple[str, int], ...], published: dict[str, Any] | None, row_of: Any
) -> str:
    """A table: each of our rows, then per metric ours, the paper's and the relative difference."""
    header = ["Row", "paper's row"]
    for name, k in columns:
        short = f"{name[0].upper()}@{k}"
        header += [short, "paper", "diff"]
    body = []
    for parts, cells, means, _ in rows(run_paths, columns):
        key = row_of(parts)
        figures = (published or {}).get(key) if key else None
        line = [_label(parts), key if figures else NOT_PUBLISHED]
        for (name, k), cell, ours in zip(columns, cells, means, strict=True):
            paper = figures.get(f"{name}@{k}") if figures else None
            line += [cell, fmt(paper) if paper else "-", f"{(ours - paper) / paper:+.1%}" if paper else "-"]
        body.append(line)
    return markdown(header, body)


def build_paper(table_runs: list[Path], ablation_runs: list[Path], dataset: str, published_name: str) -> str:
    """paper.md for ``dataset`` against the paper's dataset ``published_name``."""
    table1 = PUBLISHED["table1"].get(published_name)
    table2 = PUBLISHED["table2"].get(published_name)
    scope = f"the paper's {published_name} figures" if table1 else f"nothing: the paper has no dataset {published_name!r}"
    return (
        f"# {dataset}: against the paper's published figures\n\n"
        f"Test metrics at the best validation epoch, compared with {scope}; diff = (ours - paper) / paper.\n\n"
        f"## Table 1\n\n{compare(table_runs, TABLE_COLUMNS, table1, table1_row)}\n"
        f"## Table 2 (ablation)\n\n{compare(ablation_runs, ABLATION_COLUMNS, table2, table2_row)}"
    )
