"""Integration: the demo pipeline end to end, then what a rerun schedules after each kind of change.

One real run of `results/demo/metrics.json` (and the comparison table) in a scratch copy of the
workflow; the rerun checks are dry runs against that finished state, so they are fast.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from workflow_utils import copy_workflow, planned_jobs, snakemake

pytestmark = pytest.mark.integration

UPSTREAM = {"demo", "ingest", "kcore", "images", "build_tiny_vlm", "graph_user_item", "encode_text"}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch workflow copy in which the demo pipeline (metrics and table) ran to completion.

    Its config caps FREEDOM at 20 epochs: on the demo's 4096-d CNN features, with trainable
    features as in MMRec, it improves for ~100 epochs (2.5 min of the suite's budget); no test
    here reads its figures, and tests/test_report_html.py trains it on a small dataset.
    """
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config_file = workdir / "config" / "config.yaml"
    shipped = yaml.safe_load(config_file.read_text())
    shipped["datasets"]["demo"].setdefault("models", {})["freedom"] = {"max_epochs": 20}
    config_file.write_text(yaml.safe_dump(shipped, sort_keys=False))
    start = time.monotonic()
    result = snakemake(workdir, "--cores", "2", "results/demo/metrics.json", "results/demo/table.md")
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]
    print(f"demo pipeline (metrics + table) took {time.monotonic() - start:.0f} s")
    return workdir


def write_config(workdir: Path, name: str, text: str) -> str:
    path = workdir / name
    path.write_text(text)
    return str(path)


def test_metrics_file_holds_results_stats_config_provenance(demo: Path) -> None:
    metrics = json.loads((demo / "results/demo/metrics.json").read_text())
    for name in ("recall", "ndcg", "precision", "map"):
        for k in (10, 20):
            assert 0.0 <= metrics["test"][f"{name}@{k}"] <= 1.0
    assert metrics["test"]["recall@20"] > 0.0
    assert metrics["best_epoch"] >= 1
    assert metrics["dataset_stats"]["n_users"] > 1000 and metrics["dataset_stats"]["n_items"] > 500
    assert metrics["config"]["vlm"]["model"] == "tiny-random"
    assert metrics["provenance"]["packages"]["torch"].startswith("2.")
    compute = metrics["provenance"]["compute"]
    assert compute["cpu"] and compute["native"] == "auto"
    if shutil.which("cc"):  # which path each kernel call site took; without a compiler none is built
        assert {"cross_block forward+backward", "spmm forward"} <= set(compute["paths"])
    assert any("captions are NOT meaningful" in note for note in metrics["notes"])
    logs = [*demo.glob("results/demo/logs/*.log"), *demo.glob("results/models/logs/*.log")]
    assert logs and not [log.name for log in logs if "\r" in log.read_text()], "progress bars in a log file"
    assert "about" in (demo / "results/demo/logs/caption_tiny-random__title_cot__0of1.log").read_text()


def test_complete_run_has_nothing_left_to_do(demo: Path) -> None:
    assert planned_jobs(snakemake(demo, "-n", "results/demo/metrics.json")) == {}


def test_prompt_change_reruns_captions_and_dependants_only(demo: Path) -> None:
    extra = write_config(demo, "plain.yaml", "vlm:\n  prompt: plain\n")
    jobs = planned_jobs(snakemake(demo, "-n", "--configfile", "config/config.yaml", extra, "--", "results/demo/metrics.json"))
    assert {"caption", "caption_gather", "encode_captions", "graph_item_knn", "train", "report_metrics"} <= set(jobs)
    assert not UPSTREAM & set(jobs) and "graph_user_user" not in jobs


def test_learning_rate_change_reruns_training_only(demo: Path) -> None:
    extra = write_config(demo, "lr.yaml", "train:\n  learning_rate: 0.002\n")
    jobs = planned_jobs(snakemake(demo, "-n", "--configfile", "config/config.yaml", extra, "--", "results/demo/metrics.json"))
    assert set(jobs) == {"train", "report_metrics"}


def test_runtime_settings_rerun_nothing(demo: Path) -> None:
    """Batch size, GPU count and download concurrency change how fast, not what: no stage reruns
    (the metrics file, which records the configuration, is rewritten)."""
    extra = write_config(
        demo, "runtime.yaml", "images:\n  concurrency: 2\ndatasets:\n  demo:\n    vlm:\n      batch_size: 3\n      gpus: 1\n"
    )
    jobs = planned_jobs(snakemake(demo, "-n", "--configfile", "config/config.yaml", extra, "--", "results/demo/metrics.json"))
    assert set(jobs) <= {"report_metrics"}, jobs


@contextlib.contextmanager
def edited(workdir: Path, module: str) -> Iterator[None]:
    """``src/vlif_pipeline/<module>`` with a blank line added, restored (content and time) on exit."""
    path = workdir / "src/vlif_pipeline" / module
    stat, text = path.stat(), path.read_text()
    path.write_text(text + "\n")
    try:
        yield
    finally:
        path.write_text(text)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_editing_stage_code_reruns_that_stage_and_dependants(demo: Path) -> None:
    with edited(demo, "graphs/user_user.py"):
        jobs = planned_jobs(snakemake(demo, "-n", "results/demo/metrics.json"))
    assert set(jobs) == {"graph_user_user", "train", "report_metrics"}
    with edited(demo, "amazon/text_clean.py"):  # imported by ingest through amazon/items.py
        jobs = planned_jobs(snakemake(demo, "-n", "results/demo/metrics.json"))
    assert {"ingest", "kcore", "train", "report_metrics"} <= set(jobs) and "demo" not in jobs


def test_comparison_table_orders_the_models(demo: Path) -> None:
    """VLIF > LightGCN > BPR > popularity on test Recall@20 (issue 6's sanity check of the demo)."""
    recall = {}
    for run in ("vlif__vlm_title__pid", "lightgcn", "bpr", "popularity"):
        recall[run] = json.loads((demo / f"results/demo/runs/{run}/metrics.json").read_text())["test"]["recall@20"]
    assert recall["vlif__vlm_title__pid"] > recall["lightgcn"] > recall["bpr"] > recall["popularity"], recall
    table = (demo / "results/demo/table.md").read_text()
    for label in ("Popularity", "BPR", "LightGCN", "FREEDOM (VLM with title)", "VLIF (VLM with title)"):
        assert f"| {label} |" in table


def test_ablation_table_plans_only_the_missing_runs(demo: Path) -> None:
    """The ablation reuses the main VLIF run and trains the five other variants (paper Table 2)."""
    jobs = planned_jobs(snakemake(demo, "-n", "results/demo/ablation.md"))
    assert jobs.get("train") == 5 and "report_ablation" in jobs, jobs
    assert not UPSTREAM & set(jobs), jobs


def test_mmrec_folder_enters_after_the_raw_stages(demo: Path) -> None:
    """An MMRec-layout export of the demo, used as a dataset, gives back the same split and features."""
    import subprocess
    import sys

    import numpy as np
    import polars as pl

    assert snakemake(demo, "--cores", "2", "results/demo/features/visual__original.npy").returncode == 0
    export = subprocess.run(
        [sys.executable, "-m", "vlif_pipeline", "mmrec-export", "--kcore-dir", "results/demo/kcore",
         "--text-feat", "results/demo/features/text.npy", "--image-feat", "results/demo/features/visual__original.npy",
         "--name", "demo", "--out-dir", "mmrec_demo"],
        cwd=demo, capture_output=True, text=True,
    )
    assert export.returncode == 0, export.stderr
    extra = write_config(demo, "mm.yaml", "datasets:\n  mm:\n    format: mmrec\n    path: mmrec_demo\n    train:\n      visual: original\n")
    args = ("--configfile", "config/config.yaml", extra, "--")
    jobs = planned_jobs(snakemake(demo, "-n", *args, "results/mm/metrics.json"))
    assert {"mmrec_import", "mmrec_features", "train", "report_metrics"} <= set(jobs)
    assert not {"ingest", "kcore", "encode_text", "original_features", "images", "caption", "demo"} & set(jobs)
    result = snakemake(demo, "--cores", "2", *args, "results/mm/graphs/item_knn__original__k10__w0.5.npz")
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    inter = demo / "mmrec_demo/demo.inter"
    text = inter.read_text()
    inter.write_text(text[: text.rstrip("\n").rfind("\n") + 1])  # one interaction fewer, same folder
    try:
        assert "mmrec_import" in planned_jobs(snakemake(demo, "-n", *args, "results/mm/graphs/item_knn__original__k10__w0.5.npz"))
    finally:
        inter.write_text(text)
    target = "results/mm/graphs/item_knn__original__k10__w0.5.npz"
    with edited(demo, "tables.py"):  # imported by mmrec_import through data/mmrec.py
        jobs = planned_jobs(snakemake(demo, "-n", *args, target))
    assert {"mmrec_import", "mmrec_features", "graph_item_knn"} <= set(jobs), jobs
    with edited(demo, "amazon/text_clean.py"):  # mmrec-import cleans a meta dump's text with it
        jobs = planned_jobs(snakemake(demo, "-n", *args, target))
    assert "mmrec_import" in jobs and not {"ingest", "kcore", "caption"} & set(jobs), jobs
    cols = ["u", "i", "split"]
    ours = pl.read_parquet(demo / "results/demo/kcore/interactions.parquet").select(cols).sort(cols)
    theirs = pl.read_parquet(demo / "results/mm/kcore/interactions.parquet").select(cols).sort(cols)
    assert ours.equals(theirs)
    for name in ("text.npy", "visual__original.npy"):
        np.testing.assert_array_equal(np.load(demo / "results/demo/features" / name), np.load(demo / "results/mm/features" / name))


def test_an_mmrec_folder_with_its_meta_gets_captions_on_the_published_split(demo: Path) -> None:
    """format mmrec with a raw meta dump: titles and image URLs joined on asin through
    i_id_mapping.csv, so the split stays the folder's and the items get captions (issue 20)."""
    import polars as pl

    assert (demo / "mmrec_demo" / "demo.inter").exists(), "made by test_mmrec_folder_enters_after_the_raw_stages"
    extra = write_config(
        demo, "mm_meta.yaml",
        "datasets:\n  mmv:\n    format: mmrec\n    path: mmrec_demo\n    meta: results/demo/raw/meta.json.gz\n"
        "    vlm: {model: tiny-random, max_new_tokens: 8, batch_size: 64, gpus: 0}\n    images: {allow_local: true}\n",
    )
    args = ("--configfile", "config/config.yaml", extra, "--")
    target = "results/mmv/features/visual__vlm_title.npy"
    jobs = planned_jobs(snakemake(demo, "-n", *args, target))
    assert {"mmrec_import", "images", "caption", "encode_captions"} <= set(jobs) and "ingest" not in jobs, jobs
    result = snakemake(demo, "--cores", "2", *args, target)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    ours = pl.read_parquet(demo / "results/demo/kcore/items.parquet").select("item_id", "title", "image_url")
    joined = pl.read_parquet(demo / "results/mmv/kcore/items.parquet").select("item_id", "title", "image_url")
    assert joined.equals(ours), "every item's title and image URL, found by its asin"
    report = json.loads((demo / "results/mmv/ingest_report.json").read_text())
    assert report["items_without_meta"] == 0 and report["items_without_image_url"] == 0 and report["meta_format"] == "amazon2014"
    captions = pl.read_parquet(next((demo / "results/mmv/captions").glob("*.parquet")))
    assert (captions["status"] == "ok").all()


SWEEP = """\
datasets:
  demo:
    sweep:
      bpr: {{reg_weight: [0.001, 0.0001], learning_rate: [0.01, 0.001], max_epochs: [4]}}
      lightgcn: {{n_layers: [1, 2], reg_weight: [{lightgcn_reg}], max_epochs: [4]}}
"""


def test_a_demo_sweep_trains_each_point_once_and_reports_the_chosen_ones(demo: Path) -> None:
    """2 x 2 grids for two models: one job per point, selection on validation, the tables at the
    chosen points; adding a value trains only the new points and removing one retrains nothing."""
    grid = write_config(demo, "sweep.yaml", SWEEP.format(lightgcn_reg="0.001, 0.0001"))
    args = ("--configfile", "config/config.yaml", grid, "--")
    targets = ("results/demo/table.md", "results/demo/sweep/bpr.md", "results/demo/sweep/lightgcn.md")
    assert planned_jobs(snakemake(demo, "-n", *args, *targets)).get("train") == 8
    result = snakemake(demo, "--cores", "2", *args, *targets)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    selection = json.loads((demo / "results/demo/sweep/lightgcn.json").read_text())
    assert len(selection["points"]) == 4 and selection["chosen"]["settings"]["n_layers"] in (1, 2)
    valid = [p["figures"]["valid recall@20"]["mean"] for p in selection["points"]]
    assert selection["chosen"]["figures"]["valid recall@20"]["mean"] == max(valid)
    table = (demo / "results/demo/table.md").read_text()
    assert f"| LightGCN ({selection['chosen']['name']}) |" in table and "| VLIF (VLM with title) |" in table
    assert "**chosen**" in (demo / "results/demo/sweep/bpr.md").read_text()
    wider = write_config(demo, "wider.yaml", SWEEP.format(lightgcn_reg="0.001, 0.0001, 0.00001"))
    jobs = planned_jobs(snakemake(demo, "-n", "--configfile", "config/config.yaml", wider, "--", *targets))
    assert jobs.get("train") == 2, jobs  # the two new points only
    narrower = write_config(demo, "narrower.yaml", SWEEP.format(lightgcn_reg="0.001"))
    jobs = planned_jobs(snakemake(demo, "-n", "--configfile", "config/config.yaml", narrower, "--", *targets))
    assert "train" not in jobs and {"sweep_select", "report_table"} <= set(jobs), jobs


def test_killed_workflow_resumes_training_without_redoing_finished_jobs(demo: Path) -> None:
    """Kill Snakemake mid-training; the rerun redoes no finished job and training resumes its checkpoint."""
    import signal
    import subprocess
    import sys

    extra = write_config(demo, "resume.yaml", "train:\n  learning_rate: 0.0015\n")
    args = ["--cores", "2", "--configfile", "config/config.yaml", extra, "--", "results/demo/metrics.json"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    with open(demo / "killed_run.log", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snakemake", *args], cwd=demo, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoint = demo / "results/demo/runs/vlif__vlm_title__pid/checkpoint.pt"
    before = checkpoint.stat().st_mtime if checkpoint.exists() else 0.0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if checkpoint.exists() and checkpoint.stat().st_mtime > before:
            break
        time.sleep(0.2)
    assert proc.poll() is None, (demo / "killed_run.log").read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    jobs = planned_jobs(snakemake(demo, "-n", *args[2:]))
    assert set(jobs) == {"train", "report_metrics"}, jobs
    assert snakemake(demo, "--unlock", *args[2:]).returncode == 0  # a SIGKILL leaves Snakemake's lock
    result = snakemake(demo, *args)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    log = (demo / "results/demo/logs/train_vlif__vlm_title__pid.log").read_text()
    assert "resumed from" in log
