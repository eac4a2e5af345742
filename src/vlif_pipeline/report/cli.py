"""The `report` stage: the dataset's metrics.json, the comparison and ablation tables, a sweep's
selection and the comparison with the paper's published figures.

Reads only the files training runs write (`runs/{run}/metrics.json`), so a report never retrains
anything and always shows the test figure at the best *validation* epoch.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

from vlif_pipeline.config import TINY_VLM
from vlif_pipeline.io import atomic_path, run_stage, setup_logging, write_json
from vlif_pipeline.report import figures
from vlif_pipeline.report.paper import build_paper
from vlif_pipeline.report.runs import is_selection, metric, read_json
from vlif_pipeline.report.sweep import choose, summarise
from vlif_pipeline.report.sweep import markdown as sweep_markdown
from vlif_pipeline.report.tables import build_ablation, build_table
from vlif_pipeline.report.visual import describe, visual_summary
from vlif_pipeline.report.visual import notes as visual_notes

HEADLINE_K = (10, 20)
PACKAGES = (
    "vlif-pipeline", "torch", "transformers", "sentence-transformers", "numpy", "scipy", "polars",
    "pyarrow", "snakemake",
)


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


def figure_parsers(sub: Any) -> None:
    """The HTML report's figure commands (report/figures.py), each writing --out (and --out-png)."""
    d = sub.add_parser("data", help="the dataset's facts (CSV) and degree distributions (PNG)")
    d.add_argument("--ingest", type=Path, required=True)
    d.add_argument("--stats", type=Path, required=True)
    d.add_argument("--interactions", type=Path, required=True)
    g = sub.add_parser("gallery", help="captions beside their images (HTML)")
    for name in ("--items", "--manifest", "--captions"):
        g.add_argument(name, type=Path, required=True)
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--count", type=int, default=12)
    t = sub.add_parser("training", help="one run's loss terms and validation curve (PNG)")
    t.add_argument("--history", type=Path, required=True)
    t.add_argument("--metrics", type=Path, required=True)
    c = sub.add_parser("curves", help="every run's validation curve (PNG)")
    c.add_argument("--histories", type=Path, nargs="+", required=True)
    r = sub.add_parser("results", help="Tables 1 and 2 (CSV) and Table 1's bar chart (PNG)")
    r.add_argument("--runs", type=Path, nargs="+", required=True)
    r.add_argument("--ablation-runs", type=Path, nargs="+", required=True)
    r.add_argument("--out-ablation", type=Path, required=True)
    b = sub.add_parser("cost", help="each job's wall time and peak memory (CSV, PNG)")
    b.add_argument("--benchmarks", type=Path, nargs="+", required=True)
    e = sub.add_parser("embeddings", help="2-D PCA of the visual features (PNG)")
    e.add_argument("--features", nargs="+", required=True, help="label=path.npy, one per panel")
    e.add_argument("--items", type=Path, required=True)
    i = sub.add_parser("index", help="the list of the report's files")
    i.add_argument("--files", type=Path, nargs="+", required=True)
    for p in (d, r, b):
        p.add_argument("--out-png", type=Path, required=True)


FIGURES = {
    "data": lambda a: (figures.data_summary(a.ingest, a.stats, a.out), figures.degree_plot(a.interactions, a.out_png)),
    "gallery": lambda a: figures.gallery(a.items, a.manifest, a.captions, a.seed, a.count, a.out),
    "training": lambda a: figures.training_plot(a.history, a.metrics, a.out),
    "curves": lambda a: figures.curves_plot(a.histories, a.out),
    "results": lambda a: figures.results_outputs(a.runs, a.ablation_runs, a.out, a.out_ablation, a.out_png),
    "cost": lambda a: figures.cost_outputs(a.benchmarks, a.out, a.out_png),
    "embeddings": lambda a: figures.embeddings_plot(
        {label: Path(path) for label, path in (pair.split("=", 1) for pair in a.features)}, a.items, a.out
    ),
    "index": lambda a: figures.index_page(a.dataset, a.files, a.out),
}


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
    pp = sub.add_parser("paper", help="Tables 1 and 2 beside the paper's published figures")
    pp.add_argument("--runs", type=Path, nargs="+", required=True, help="Table 1's runs (or sweep selections)")
    pp.add_argument("--ablation-runs", type=Path, nargs="+", required=True, help="Table 2's runs")
    pp.add_argument("--published", required=True, help="the paper's dataset to compare with (baby, sports, ...)")
    figure_parsers(sub)
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
        if args.what in FIGURES:
            FIGURES[args.what](args)
            logger.info("wrote %s", args.out)
        elif args.what == "paper":
            with atomic_path(args.out) as tmp:
                tmp.write_text(build_paper(args.runs, args.ablation_runs, args.dataset, args.published))
            logger.info("wrote %s", args.out)
        elif args.what == "sweep":
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
