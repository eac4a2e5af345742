"""Bad configuration stops Snakemake before any job starts, naming the key and the problem."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from workflow_utils import copy_workflow, snakemake


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
