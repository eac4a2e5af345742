"""The figures and small tables of the HTML report (``snakemake --report``): data, captions,
training, results, cost and embeddings. Plots by matplotlib (Agg, no screen), tables as CSV, which
Snakemake's report renders as tables; the caption gallery is one HTML file with its thumbnails inline.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from vlif_pipeline.io import atomic_path, load_item_features
from vlif_pipeline.report.runs import read_json, rows
from vlif_pipeline.report.tables import ABLATION_COLUMNS, TABLE_COLUMNS

LOSS_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def _pyplot() -> Any:
    import matplotlib  # noqa: PLC0415 - only the figure commands pay for it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    return plt


def _save(fig: Any, out: Path) -> None:
    """PNG, atomically (a killed job leaves no half figure)."""
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def _write_csv(out: Path, header: list[str], body: list[list[Any]]) -> None:
    with atomic_path(out) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(body)


def data_summary(ingest: Path, stats: Path, out: Path) -> None:
    """The dataset's facts, one row each: what ingest (or an MMRec import) read, kept and dropped,
    and the k-core and split it ended with."""
    body: list[list[Any]] = []
    for source, record in (("ingest", read_json(ingest)), ("k-core", read_json(stats))):
        for key, value in record.items():
            if isinstance(value, dict):
                body += [[source, f"{key}.{sub}", json.dumps(v) if isinstance(v, (dict, list)) else v]
                         for sub, v in value.items()]
            else:
                body.append([source, key, json.dumps(value) if isinstance(value, list) else value])
    _write_csv(out, ["source", "fact", "value"], body)


def degree_plot(interactions: Path, out: Path) -> None:
    """Log-log distributions of user and item degrees (interactions per user and per item)."""
    plt = _pyplot()
    table = pl.read_parquet(interactions, columns=["u", "i"])
    fig, ax = plt.subplots(figsize=(6, 4))
    for column, label in (("u", "users"), ("i", "items")):
        degrees = table.get_column(column).value_counts().get_column("count").to_numpy()
        values, counts = np.unique(degrees, return_counts=True)
        ax.loglog(values, counts, "o", markersize=3, label=f"{label} ({degrees.size})")
    ax.set(xlabel="interactions (degree)", ylabel="number of nodes", title="Degree distributions")
    ax.legend()
    _save(fig, out)


def _thumbnail(path: str | None, side: int = 128) -> str | None:
    if path is None:
        return None
    from PIL import Image  # noqa: PLC0415

    try:
        with Image.open(path) as image:
            image.thumbnail((side, side))
            buffer = io.BytesIO()
            image.convert("RGB").save(buffer, format="JPEG", quality=85)
    except OSError:
        return None
    return base64.b64encode(buffer.getvalue()).decode()


def gallery(items: Path, manifest: Path, captions: Path, seed: int, count: int, out: Path) -> None:
    """``count`` items drawn with ``seed``: thumbnail, title, caption and the caption's status (an
    item without a usable image shows its image status instead of a picture)."""
    titles = pl.read_parquet(items, columns=["i", "item_id", "title"])
    images = pl.read_parquet(manifest, columns=["i", "path", "status"])
    texts = pl.read_parquet(captions, columns=["i", "caption", "status"])
    table = titles.join(images, on="i").join(texts.rename({"status": "caption_status"}), on="i").sort("i")
    chosen = sorted(random.Random(seed).sample(range(table.height), min(count, table.height)))
    cards = []
    for row in table[chosen].iter_rows(named=True):
        thumb = _thumbnail(row["path"]) if row["status"] == "ok" else None
        picture = (f'<img src="data:image/jpeg;base64,{thumb}" alt="{html.escape(row["item_id"])}">' if thumb
                   else f'<div class="none">no image: {html.escape(row["status"])}</div>')
        cards.append(
            f'<figure>{picture}<figcaption><b>{html.escape(row["title"] or "(no title)")}</b>'
            f"<p>{html.escape(row['caption'] or '(empty)')}</p>"
            f"<small>{html.escape(row['item_id'])} · caption {html.escape(row['caption_status'])}</small>"
            "</figcaption></figure>"
        )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Captions</title><style>"
        "body{font-family:sans-serif;margin:1em}.grid{display:grid;grid-template-columns:repeat(auto-fill,"
        "minmax(220px,1fr));gap:1em}figure{margin:0;border:1px solid #ccc;padding:.5em}img,.none{width:128px;"
        "height:128px;object-fit:contain;display:block}.none{background:#eee;color:#555;font-size:small}"
        "p{font-size:small}</style></head><body>"
        f"<p>{len(cards)} items drawn with seed {seed} of {table.height}.</p><div class='grid'>{''.join(cards)}</div>"
        "</body></html>"
    )
    with atomic_path(out) as tmp:
        tmp.write_text(page)


def training_plot(history: Path, metrics: Path, out: Path) -> None:
    """One run: each loss term (left axis) and validation Recall@20 (right axis) per epoch, the
    best validation epoch marked."""
    plt = _pyplot()
    epochs = read_json(history)["epochs"]
    best = read_json(metrics).get("best_epoch")
    fig, ax = plt.subplots(figsize=(7, 4))
    x = [record["epoch"] for record in epochs]
    for color, key in zip(LOSS_COLORS, epochs[0]["loss"] if epochs else [], strict=False):
        ax.plot(x, [record["loss"][key] for record in epochs], color=color, label=key)
    ax.set(xlabel="epoch", ylabel="loss (mean over the epoch's batches)", yscale="symlog", title=history.parent.name)
    ax.xaxis.get_major_locator().set_params(integer=True)
    valid = [(record["epoch"], record["valid"]["recall@20"]) for record in epochs if "valid" in record]
    if valid:
        right = ax.twinx()
        right.plot(*zip(*valid, strict=True), color="black", linestyle="--", label="valid recall@20")
        right.set_ylabel("valid recall@20")
        right.legend(loc="lower right")
    if best:
        ax.axvline(best, color="grey", linestyle=":", label=f"best epoch {best}")
    ax.legend(loc="upper right", fontsize="small")
    _save(fig, out)


def curves_plot(histories: list[Path], out: Path) -> None:
    """Every run's validation Recall@20 per epoch, in one plot."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for path in histories:
        valid = [(r["epoch"], r["valid"]["recall@20"]) for r in read_json(path)["epochs"] if "valid" in r]
        if valid:
            ax.plot(*zip(*valid, strict=True), label=path.parent.name)
    ax.set(xlabel="epoch", ylabel="valid recall@20", title="Validation curves")
    ax.legend(fontsize="x-small")
    _save(fig, out)


def _table_csv(run_paths: list[Path], columns: tuple[tuple[str, int], ...], out: Path) -> tuple[list[str], list[Any]]:
    """A table's rows as CSV (run name, figures, best epochs); its labels and rows for a chart."""
    table = rows(run_paths, columns)
    labels = ["__".join(str(p) for p in (parts["model"], parts["variant"], parts["fusion"]) if p) for parts, *_ in table]
    _write_csv(out, ["row", *(f"{n}@{k}" for n, k in columns), "best epoch"],
               [[label, *cells, epochs] for label, (_, cells, _, epochs) in zip(labels, table, strict=True)])
    return labels, table


def results_outputs(
    run_paths: list[Path], ablation_paths: list[Path], out_csv: Path, out_ablation: Path, out_png: Path
) -> None:
    """Tables 1 and 2 as CSV, and a bar chart of Table 1's test Recall@20 and NDCG@20 per model."""
    plt = _pyplot()
    labels, table = _table_csv(run_paths, TABLE_COLUMNS, out_csv)
    _table_csv(ablation_paths, ABLATION_COLUMNS, out_ablation)
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(table))
    for offset, (name, k) in ((-0.2, ("recall", 20)), (0.2, ("ndcg", 20))):
        column = TABLE_COLUMNS.index((name, k))
        ax.bar(x + offset, [means[column] for _, _, means, _ in table], width=0.4, label=f"test {name}@{k}")
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set(ylabel="test metric at the best validation epoch", title="Results")
    ax.legend()
    _save(fig, out_png)


def cost_outputs(benchmarks: list[Path], out_csv: Path, out_png: Path) -> None:
    """Each job's wall time and peak memory from its ``benchmark:`` file, as CSV and a bar chart."""
    plt = _pyplot()
    body = []
    for path in benchmarks:
        with open(path) as fh:
            record = next(csv.DictReader(fh, delimiter="\t"))
        body.append([path.stem, float(record["s"]), float(record["max_rss"]) if record["max_rss"] != "NA" else 0.0])
    body.sort(key=lambda row: -row[1])
    _write_csv(out_csv, ["job", "seconds", "peak RSS MB"], body)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, max(3, 0.25 * len(body))), sharey=True)
    names = [row[0] for row in body]
    left.barh(names, [row[1] for row in body])
    left.set(xlabel="wall time (s)", title="Cost per job")
    right.barh(names, [row[2] for row in body], color="tab:orange")
    right.set(xlabel="peak RSS (MB)")
    left.invert_yaxis()
    _save(fig, out_png)


def _pca(features: np.ndarray) -> np.ndarray:
    """The first two principal components, by an SVD of the centred rows."""
    centred = features - features.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def category_level(categories: list[str]) -> list[str]:
    """Each item's category at the first level of the category path where items differ: the top
    level, unless every item shares it (a Baby dump's items are all under "Baby")."""
    paths = [[part.strip() for part in text.split(",") if part.strip()] for text in categories]
    for level in range(max((len(path) for path in paths), default=0)):
        labels = [path[level] if len(path) > level else "(none)" for path in paths]
        if len(set(labels)) > 1:
            return labels
    return ["(none)" if not path else path[0] for path in paths]


def embeddings_plot(features: dict[str, Path], items: Path, out: Path) -> None:
    """2-D PCA of each visual feature matrix, side by side, coloured by category (the paper's
    Figure 4 view: CNN features beside VLM-based ones); the nine largest categories, the rest grey."""
    plt = _pyplot()
    categories = pl.read_parquet(items, columns=["categories"]).get_column("categories").fill_null("")
    top = category_level(categories.to_list())
    names = [name for name, _ in sorted(((n, top.count(n)) for n in set(top)), key=lambda p: -p[1])][:9]
    fig, axes = plt.subplots(1, len(features), figsize=(5 * len(features), 4.5), squeeze=False)
    for ax, (label, path) in zip(axes[0], features.items(), strict=True):
        points = _pca(load_item_features(path, len(top)))
        for index, name in enumerate([*names, "other"]):
            chosen = [k for k, value in enumerate(top) if (value == name if name != "other" else value not in names)]
            if chosen:
                color = "lightgrey" if name == "other" else f"C{index}"
                ax.scatter(points[chosen, 0], points[chosen, 1], s=6, label=name, color=color)
        ax.set(title=label, xlabel="PC 1", ylabel="PC 2")
    axes[0][-1].legend(fontsize="x-small", markerscale=2, loc="best")
    _save(fig, out)


def index_page(dataset: str, files: list[Path], out: Path) -> None:
    """What the report holds, one line per file (the target that builds every figure)."""
    lines = [f"# {dataset}: report files", "", *(f"- {path}" for path in files), ""]
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(lines))
