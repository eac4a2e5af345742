"""Bad configuration stops Snakemake before any job starts, naming the key and the problem."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from vlif_pipeline.codedeps import PACKAGE, stage_sources
from workflow_utils import copy_workflow, planned_jobs, snakemake


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("datasets:\n  shop:\n    format: amazon2099\n    reviews: r.json\n    meta: m.json\n", "datasets.shop.format: 'amazon2099' is not one of"),
        ("kcore: 0\n", "kcore: 0 is less than the minimum of 1"),
        ("datasets:\n  shop:\n    format: amazon2014\n    reviews: https://example.org/r.json.gz\n    meta: missing/meta.json.gz\n",
         "datasets.shop.meta: local path 'missing/meta.json.gz' does not exist"),
    ],
)
def test_bad_config_fails_before_any_job(workdir: Path, override: str, message: str) -> None:
    (workdir / "bad.yaml").write_text(override)
    result = snakemake(workdir, "--cores", "1", "--configfile", "config/config.yaml", "bad.yaml", "--", "results/demo/metrics.json")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in out, out[-3000:]
    assert not (workdir / "results").exists()


def test_real_dataset_plans_download_to_metrics_offline(workdir: Path) -> None:
    """`snakemake -n results/baby/metrics.json` plans the whole real DAG without the network."""
    result = snakemake(workdir, "-n", "results/baby/metrics.json")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    for rule in ("download", "ingest", "kcore", "images", "caption", "encode_captions", "train", "report_metrics"):
        assert f"rule {rule}:" in out or f"localrule {rule}:" in out, rule


def test_the_venvs_snakemake_runs_jobs_without_the_venv_on_path(workdir: Path) -> None:
    """`.venv/bin/snakemake ...` without activating the venv: each job must still run this
    interpreter (the one with vlif_pipeline installed), not the first `python` on PATH."""
    executable = Path(sys.executable).parent / "snakemake"
    if not executable.exists():
        pytest.skip(f"no snakemake script beside {sys.executable}")
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if Path(p) != executable.parent)
    done = subprocess.run(
        [str(executable), "--cores", "1", "results/demo/raw/truth.json"],
        cwd=workdir, env={**os.environ, "PATH": path}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert (workdir / "results/demo/raw/truth.json").exists()


def tiny_mmrec_folder(folder: Path) -> None:
    """An MMRec dataset of three users and two items, with both feature files."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["0\t0\t5\t1\t0", "0\t1\t5\t2\t2", "1\t1\t4\t3\t0", "1\t0\t4\t4\t1", "2\t0\t3\t5\t0", "2\t1\t3\t6\t2"]
    (folder / "tiny.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n" + "\n".join(rows) + "\n")
    (folder / "i_id_mapping.csv").write_text("asin\titemID\nB1\t0\nB2\t1\n")
    np.save(folder / "text_feat.npy", np.ones((2, 4), np.float32))
    np.save(folder / "image_feat.npy", np.ones((2, 8), np.float32))


def planned_commands(workdir: Path, *args: str) -> list[tuple[str, set[str], str]]:
    """(rule, its inputs, its shell command) of every job a forced dry run plans."""
    result = snakemake(workdir, "-n", "-p", "--forceall", *args)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    jobs = []
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0]
        inputs = re.search(r"^    input: (.*)$", block, re.M)
        command = re.search(r"^Shell command: (.*)$", block, re.M)
        assert command is not None, block
        jobs.append((rule, set(inputs.group(1).split(", ")) if inputs else set(), command.group(1)))
    return jobs


def test_every_rules_code_inputs_are_the_import_closure_of_the_stage_it_runs(workdir: Path) -> None:
    """A rule's source-file inputs must be exactly what its program runs: a file missing from them
    is an edit that reruns nothing; a file too many reruns a stage for nothing."""
    tiny_mmrec_folder(workdir / "mm_folder")
    (workdir / "mm.yaml").write_text(
        "datasets:\n  mm:\n    format: mmrec\n    path: mm_folder\n    train:\n      visual: original\n"
    )
    package = workdir / "src" / "vlif_pipeline"
    seen = set()
    targets = ("results/demo/table.md", "results/demo/ablation.md", "results/mm/metrics.json")
    for rule, inputs, command in planned_commands(workdir, "--configfile", "config/config.yaml", "mm.yaml", "--", *targets):
        stage = re.search(r"python -m vlif_pipeline ([\w-]+)", command)
        assert stage is not None, f"rule {rule} runs no stage: {command}"
        code = {Path(path).relative_to(package) for path in inputs if Path(path).is_relative_to(package)}
        expected = {path.relative_to(PACKAGE) for path in stage_sources(stage.group(1))}
        assert code == expected, f"rule {rule} (stage {stage.group(1)}): {code ^ expected}"
        seen.add(rule)
    assert {"kcore", "mmrec_import", "mmrec_features", "encode_text", "original_features", "train"} <= seen


def test_a_dataset_folder_with_spaces_and_shell_characters_runs(workdir: Path) -> None:
    """Local raw files under `my data (v2)`: every rule quotes the paths it hands to the shell."""
    folder = workdir / "my data (v2)"
    generated = subprocess.run(
        [sys.executable, "-m", "vlif_pipeline", "demo", "--out-dir", str(folder), "--seed", "1",
         "--n-users", "120", "--n-items", "40", "--image-size", "16"],
        capture_output=True, text=True, timeout=300,
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    (workdir / "spaced.yaml").write_text(
        "datasets:\n  spaced:\n    format: amazon2014\n"
        "    reviews: 'my data (v2)/reviews.json.gz'\n    meta: 'my data (v2)/meta.json.gz'\n"
        "    images: {allow_local: true}\n"
    )
    result = snakemake(
        workdir, "--cores", "2", "--configfile", "config/config.yaml", "spaced.yaml", "--",
        "results/spaced/images/manifest.parquet", "results/spaced/kcore/stats.json",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    statuses = pl.read_parquet(workdir / "results/spaced/images/manifest.parquet")["status"]
    assert (statuses == "ok").all(), statuses.value_counts()


def test_the_reference_grids_plan_one_training_job_per_point_on_baby(workdir: Path) -> None:
    """config/presets/grids.yaml, offline: 7 BPR + 20 LightGCN + 8 FREEDOM + 6 VLIF points, then
    popularity and FREEDOM on the CNN features (not swept)."""
    result = snakemake(
        workdir, "-n", "--configfile", "config/config.yaml", "config/presets/grids.yaml", "--", "results/baby/table.md"
    )
    jobs = planned_jobs(result)
    assert jobs["train"] == 7 + 20 + 8 + 6 + 2 and jobs["sweep_select"] == 4, jobs
