"""The `report` stage: the dataset's metrics.json, the comparison table and the ablation table.

Reads only the files training runs write (`runs/{run}/metrics.json`), so a report never retrains
anything and always shows the test figure at the best *validation* epoch.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import platform
import re
import statistics
import subprocess
from pathlib import Path
from typing import Any

from vlif_pipeline.config import TINY_VLM, ConfigError, parse_run_id
from vlif_pipeline.io import StageError, atomic_path, run_stage, setup_logging, write_json
from vlif_pipeline.registry import FUSIONS, MODELS, VARIANTS
from vlif_pipeline.report.sweep import choose, summarise
from vlif_pipeline.report.sweep import markdown as sweep_markdown
from vlif_pipeline.report.visual import describe, visual_summary
from vlif_pipeline.report.visual import notes as visual_notes

HEADLINE_K = (10, 20)
PACKAGES = (
    "vlif-pipeline", "torch", "transformers", "sentence-transformers", "numpy", "scipy", "polars",
    "pyarrow", "snakemake",
)
TABLE_COLUMNS = (("recall", 10), ("recall", 20), ("ndcg", 10), ("ndcg", 20))
ABLATION_COLUMNS = (("recall", 10), ("recall", 20), ("ndcg", 20))


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


def provenance(device: str | None, compute: dict[str, Any] | None) -> dict[str, Any]:
    """What produced the numbers: package versions, git commit, machine, device and, on a CPU,
    the CPU model and which path (C kernels or PyTorch's ops) each kernel call site took: they
    round differently, and the best epoch can move with them."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    repo = Path(__file__).resolve().parents[3]
    git = {"commit": None, "dirty": None}
    try:
        git["commit"] = _git(repo, "rev-parse", "HEAD")
        git["dirty"] = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "packages": versions,
        "git": git,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "compute": compute,
    }


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout.strip()


def build_metrics(
    run_path: Path, stats_path: Path, ingest_path: Path | None, config: dict[str, Any], dataset: str,
    visual: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The dataset's headline file: test metrics at the best validation epoch, and their context.

    ``run_path`` may be a sweep selection: the chosen point's first run is then the main run, and
    the file records the grid and the chosen point."""
    selection = None
    if is_selection(run_path):
        selection = read_json(run_path)
        run_path = Path(selection["chosen"]["runs"][0])
    run = read_json(run_path)
    test = {f"{name}@{k}": metric(run, "test", name, k, run_path)
            for name in ("recall", "ndcg", "precision", "map") for k in HEADLINE_K}
    notes = []
    if config["vlm"]["model"] == TINY_VLM and config["train"]["visual"] == "vlm":
        notes.append(
            "captions are NOT meaningful: they come from a tiny randomly initialised Qwen2.5-VL built "
            "offline, so the visual modality here is the title plus noise. Use train.visual=original "
            "(CNN features) or a real VLM for a meaningful visual signal."
        )
    result = {
        "dataset": dataset,
        "run": run_path.parent.name,
        "test": test,
        "valid": run.get("valid", {}),
        "best_epoch": run.get("best_epoch"),
        "epochs_run": run.get("epochs_run"),
        "stopped_reason": run.get("stopped_reason"),
        "dataset_stats": read_json(stats_path),
        "config": config,
        "provenance": provenance(run.get("device"), run.get("compute")),
        "notes": notes,
    }
    if selection is not None:
        result["sweep"] = {"grid": [point["settings"] for point in selection["points"]], "chosen": selection["chosen"]}
    if visual is not None:
        result["visual"] = visual
        notes += visual_notes(visual)
    if ingest_path is not None and ingest_path.exists():
        result["ingest"] = read_json(ingest_path)
        notes += result["ingest"].get("warnings", [])  # e.g. a field that is empty for most items
    return result


def _fmt(value: float) -> str:
    return f"{value:.4f}"


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _bold_best(rows: list[list[str]], values: list[list[float]], first_col: int) -> None:
    for col in range(len(values[0])):
        best = max(range(len(values)), key=lambda r: values[r][col])
        rows[best][first_col + col] = f"**{rows[best][first_col + col]}**"


def is_selection(path: Path) -> bool:
    """Whether ``path`` is a sweep selection (``sweep/{model}.json``) rather than a run's metrics."""
    return path.parent.name == "sweep"


def expand_selections(paths: list[Path]) -> list[Path]:
    """Run metrics files, each sweep selection replaced by the runs of its chosen point."""
    return [Path(run) for path in paths for run in (
        read_json(path)["chosen"]["runs"] if is_selection(path) else [path]
    )]


def _rows(
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
            cells.append(_fmt(means[-1]) if len(values) == 1 else f"{_fmt(means[-1])} ± {_fmt(statistics.stdev(values))}")
        epochs = ", ".join(str(run.get("best_epoch")) for run in runs)
        rows.append((run_parts(paths[0]), cells, means, epochs))
    return rows


def build_table(run_paths: list[Path], dataset: str, visual: dict[str, Any] | None = None) -> str:
    """Paper Table 1 layout: one row per model, test R@10, R@20, N@10, N@20; best in bold.

    A row with several runs (seeds of a swept model's chosen point) shows mean +/- std."""
    rows, values = [], []
    for parts, cells, means, epochs in _rows(run_paths, TABLE_COLUMNS):
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
    return title + _markdown(header, rows) + footer


def build_ablation(run_paths: list[Path], dataset: str) -> str:
    """Paper Table 2 layout: image-feature variants (PID fusion) and fusion variants (title captions)."""
    for path in run_paths:
        if run_parts(path)["model"] != "vlif":
            raise StageError(f"{path}: the ablation compares VLIF runs only, got '{run_parts(path)['model']}'")
    rows, values = [], []
    for parts, cells, means, _ in _rows(run_paths, ABLATION_COLUMNS):
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
    return title + _markdown(header, rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="vlif_pipeline report", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    m = sub.add_parser("metrics", help="the dataset's metrics.json from its main run")
    m.add_argument("--run", type=Path, required=True,
                   help="runs/{run}/metrics.json of the main run, or sweep/{model}.json of its sweep")
    m.add_argument("--stats", type=Path, required=True, help="kcore/stats.json")
    m.add_argument("--ingest-report", type=Path, help="ingest_report.json, if the dataset had raw files")
    m.add_argument("--config-json", required=True, help="the dataset's resolved configuration")
    for name, help_ in (("table", "VLIF against the baselines"), ("ablation", "feature and fusion ablations")):
        t = sub.add_parser(name, help=help_)
        t.add_argument("--runs", type=Path, nargs="+", required=True,
                       help="runs/{run}/metrics.json files; a sweep/{model}.json stands for its chosen point's runs")
    s = sub.add_parser("sweep", help="choose a model's grid point on validation only")
    s.add_argument("--plan", required=True, help="JSON list, grid order: {settings, runs: [runs/{run}/metrics.json]}")
    s.add_argument("--model", required=True)
    s.add_argument("--out-md", type=Path, required=True)
    for p in (m, sub.choices["table"]):
        p.add_argument("--variant", help="the visual variant the runs use (with the files below)")
        p.add_argument("--captions", type=Path, help="its captions parquet (VLM variants)")
        p.add_argument("--manifest", type=Path, help="the images manifest (VLM variants)")
        p.add_argument("--cnn-report", type=Path, help="the CNN features' report (variant original)")
    for p in sub.choices.values():
        p.add_argument("--dataset", required=True)
        p.add_argument("--out", type=Path, required=True)
        p.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log, "vlif.report")

    def body() -> None:
        visual = None
        if args.what in ("metrics", "table") and args.variant:
            visual = visual_summary(args.variant, args.captions, args.manifest, args.cnn_report)
            logger.info("%s", describe(visual))
        if args.what == "sweep":
            points = summarise(json.loads(args.plan), lambda path, *figure: metric(read_json(path), *figure, path))
            chosen = choose(points)
            write_json(args.out, {"model": args.model, "selected_on": "mean valid recall@20", "points": points,
                                  "chosen": chosen})
            with atomic_path(args.out_md) as tmp:
                tmp.write_text(sweep_markdown(args.model, args.dataset, points, chosen))
            logger.info("%s: chose %s of %d grid points", args.model, chosen["name"] or "the only point", len(points))
        elif args.what == "metrics":
            result = build_metrics(
                args.run, args.stats, args.ingest_report, json.loads(args.config_json), args.dataset, visual
            )
            write_json(args.out, result)
            for note in result["notes"]:
                logger.warning("%s", note)
            logger.info("test %s", json.dumps(result["test"]))
        else:
            text = build_table(args.runs, args.dataset, visual) if args.what == "table" else build_ablation(
                args.runs, args.dataset
            )
            with atomic_path(args.out) as tmp:
                tmp.write_text(text)
            logger.info("wrote %s", args.out)

    return run_stage(body, logger)
