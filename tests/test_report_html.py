"""The HTML report (`snakemake --report`) of a small generated dataset: every section and figure."""

from __future__ import annotations

from pathlib import Path

import pytest

from workflow_utils import copy_workflow, snakemake

pytestmark = pytest.mark.integration

MINI = """\
datasets:
  mini:
    format: synthetic
    synthetic: {n_users: 300, n_items: 120, image_size: 24}
    vlm: {model: tiny-random, max_new_tokens: 8, batch_size: 64, gpus: 0}
    train: {max_epochs: 3, patience: 3, gpus: 0}
"""
SECTIONS = ("1 Data", "2 Captions", "3 Training", "4 Results", "5 Cost", "6 Embeddings")


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    workdir = copy_workflow(tmp_path_factory.mktemp("report"))
    (workdir / "mini.yaml").write_text(MINI)
    args = ("--configfile", "config/config.yaml", "mini.yaml", "--")
    built = snakemake(workdir, "--cores", "2", *args, "results/mini/report/index.md", "results/mini/recommendations.parquet")
    assert built.returncode == 0, (built.stdout + built.stderr)[-4000:]
    made = snakemake(workdir, "--report", "results/mini/report.html", *args, "results/mini/report/index.md")
    assert made.returncode == 0, (made.stdout + made.stderr)[-4000:]
    return workdir, (workdir / "results/mini/report.html").read_text()


def test_the_report_has_every_section_and_figure(report: tuple[Path, str]) -> None:
    workdir, page = report
    for section in SECTIONS:
        assert section in page, section
    expected = ["data.csv", "degrees.png", "captions.html", "validation_curves.png", "table.csv", "ablation.csv",
                "results.png", "cost.csv", "cost.png", "embeddings.png"]
    expected += [path.name for path in (workdir / "results/mini/report/training").glob("*.png")]
    assert len(expected) > 12, "one training figure per run of the table"
    for name in expected:
        assert name in page, name


def test_the_figures_are_real_images_and_the_gallery_shows_twelve_items(report: tuple[Path, str]) -> None:
    workdir, _ = report
    folder = workdir / "results/mini/report"
    for png in [*folder.glob("*.png"), *folder.glob("training/*.png")]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
    gallery = (folder / "captions.html").read_text()
    assert gallery.count("<figure>") == 12 and gallery.count("data:image/jpeg;base64,") == 12
    cost = (folder / "cost.csv").read_text().splitlines()
    assert cost[0] == "job,seconds,peak RSS MB" and any(line.startswith("train_vlif") for line in cost)


def test_recommendations_are_written_for_every_user(report: tuple[Path, str]) -> None:
    import polars as pl

    workdir, _ = report
    frame = pl.read_parquet(workdir / "results/mini/recommendations.parquet")
    assert frame["u"].n_unique() == frame["u"].max() + 1 and (frame.group_by("u").len()["len"] == 20).all()
