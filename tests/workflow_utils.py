"""Run the real workflow (Snakefile + rules + config) in a scratch copy, and read its plans."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ("Snakefile", "rules", "config", "profiles", "envs", "src")


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow's own files (not results/) so tests can edit code and configs freely."""
    for part in WORKFLOW_PARTS:
        src = REPO / part
        if src.is_dir():
            shutil.copytree(src, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, dest / part)
    return dest


def snakemake(workdir: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    """Run snakemake from this interpreter, with its bin folder first on PATH (rules call `python`)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout,
    )


def planned_jobs(result: subprocess.CompletedProcess[str]) -> dict[str, int]:
    """Rule name -> job count from a dry run's 'Job stats' table (empty when nothing to do)."""
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    counts: dict[str, int] = {}
    in_table = False
    for line in out.splitlines():
        if line.startswith("Job stats:"):
            in_table = True
            continue
        match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if in_table and match:
            if match.group(1) == "total":
                break
            counts[match.group(1)] = int(match.group(2))
    return counts
