"""The SLURM profile on a real SLURM cluster: a single node on this machine, from Debian's packages.

`scripts/slurm-local.sh start` installs and starts munge, slurmctld and slurmd with one fake GPU
(CI runs it before pytest; here the fixture runs it when no cluster is up, and then stops what it
started). Two tests, both through `--workflow-profile profiles/slurm`:

- a three-rule workflow of the test's own, fast: CPU and GPU requests reach sbatch, SLURM gives
  the GPU job a GPU, a failed job is resubmitted with more memory and time (`attempt`);
- the real pipeline on a small synthetic dataset, caption shards and training asking for a GPU:
  every job went through SLURM (the job ids Snakemake logged are jobs SLURM ran, in the work
  directory of this run) and the outputs equal those of a local run of the same workflow
  (exactly, except the training run's floats: equal up to float32 noise, see TRAINING_TOLERANCE).

Skipped, with the reason, where SLURM cannot be set up (not root, no apt-get) or where the
configured cluster is not the local test cluster (the tests never submit to a real site).
"""

from __future__ import annotations

import gzip
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
PROFILE = REPO / "profiles" / "slurm"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
TEST_CLUSTER = "vlif-local"  # ClusterName in the slurm.conf that scripts/slurm-local.sh writes
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: ([^)]*)\)")
# Snakemake checks job states from the first seconds on, not after the plugin's default 40 s.
FAST_POLL = ("--slurm-init-seconds-before-status-checks", "2")


# ----------------------------------------------------------------------------- cluster and runs


def _scontrol_config() -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        return {}
    pairs = (line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _cluster_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    return ping.returncode == 0 and "is UP" in ping.stdout


@pytest.fixture(scope="module")
def slurm() -> dict[str, str]:
    """The local test cluster's configuration (`scontrol show config`), started if need be."""
    if os.geteuid() != 0:
        pytest.skip("SLURM test needs root: scripts/slurm-local.sh installs packages and starts daemons")
    was_up = _cluster_up()
    if was_up and _scontrol_config().get("ClusterName") != TEST_CLUSTER:
        pytest.skip("a SLURM cluster other than scripts/slurm-local.sh's runs here; not submitting test jobs to it")
    if not was_up and shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("SLURM test needs apt-get (to install Debian's slurm packages) or SLURM installed")
    had_config = SLURM_CONF.exists()
    start = subprocess.run(["bash", str(SCRIPT), "start"], capture_output=True, text=True, timeout=900)
    if start.returncode == 3:
        pytest.skip(f"SLURM cannot be set up here: {start.stderr.strip()[-500:]}")
    assert start.returncode == 0, f"scripts/slurm-local.sh start failed:\n{start.stderr[-3000:]}"
    config = _scontrol_config()
    if config.get("ClusterName") != TEST_CLUSTER:
        pytest.skip(f"the configured SLURM cluster is {config.get('ClusterName')!r}, not the local test cluster")
    yield config
    if not was_up:  # stop only what this fixture started; CI's cluster stays up for CI to stop
        stop = subprocess.run(["bash", str(SCRIPT), "stop"], capture_output=True, text=True, timeout=120)
        assert stop.returncode == 0, stop.stderr
        # A slurm.conf left without its controller makes every snakemake start wait 9 s for it.
        assert had_config or not SLURM_CONF.exists(), f"stop left {SLURM_CONF} behind"


def _env(workdir: Path) -> dict[str, str]:
    """This interpreter's environment, as a user's activated venv gives it: `python` on PATH is
    ours, and the copy's own sources shadow any installed vlif_pipeline. SLURM jobs inherit it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir / "src"), env.get("PYTHONPATH")]))
    return env


def _snakemake(workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """Start snakemake in `workdir` in the background, its output going to a file there."""
    log = workdir.parent / f"{workdir.name}-snakemake.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "snakemake", *args], cwd=workdir, env=_env(workdir),
            stdout=out, stderr=subprocess.STDOUT,
        )
    return proc, log


def _finish(started: tuple[subprocess.Popen, Path], timeout: float = 1800) -> str:
    """Wait for a snakemake started by `_snakemake`; its combined output, failing on error."""
    proc, log = started
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # snakemake cancels its SLURM jobs on SIGTERM
        proc.wait(timeout=120)
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, f"snakemake exited {proc.returncode}:\n{out[-8000:]}"
    return out


def _submissions(log: str) -> dict[str, list[str]]:
    """Rule name -> SLURM job ids, in submission order, from a Snakemake log."""
    by_rule: dict[str, list[str]] = {}
    for jobid, slurm_log in SUBMITTED.findall(log):
        rule = re.search(r"/rule_(\w+)/", slurm_log)
        assert rule, f"no rule in SLURM log path {slurm_log}"
        by_rule.setdefault(rule.group(1), []).append(jobid)
    return by_rule


def _job(jobid: str) -> dict[str, str]:
    """What SLURM knows of a job (`scontrol show job`; finished jobs stay for MinJobAge)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", jobid], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"SLURM does not know job {jobid}: {out.stderr}"
    return dict(token.split("=", 1) for token in out.stdout.split() if "=" in token)


def _mem_mb(job: dict[str, str]) -> int:
    value = job["MinMemoryNode"]
    return int(float(value[:-1]) * {"M": 1, "G": 1024, "T": 1024 * 1024}[value[-1]])


def _minutes(limit: str) -> int:
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    hours, minutes = (parts[0], parts[1]) if len(parts) == 3 else (0, parts[0])
    return (int(days or 0) * 24 + hours) * 60 + minutes


def _check_went_through_slurm(slurm: dict[str, str], log: str, workdir: Path) -> dict[str, list[dict]]:
    """Every job id Snakemake logged is a job SLURM allocated and ran in `workdir`."""
    run_id = re.search(r"SLURM run ID: (\S+)", log)
    assert run_id, "no SLURM run ID in the Snakemake log: was the slurm executor used?"
    by_rule = _submissions(log)
    assert by_rule, "Snakemake submitted no SLURM jobs"
    ctld_log = Path(slurm["SlurmctldLogFile"]).read_text(errors="replace")
    jobs: dict[str, list[dict]] = {}
    for rule, ids in by_rule.items():
        for jobid in ids:
            job = _job(jobid)
            assert job["JobName"] == run_id.group(1), (rule, job)
            assert Path(job["WorkDir"]).resolve() == workdir.resolve(), (rule, job)
            for event in ("_slurm_rpc_submit_batch_job", "_job_complete"):  # slurmctld's own record
                assert re.search(rf"{event}: JobId={jobid} ", ctld_log), f"no '{event}' of job {jobid} in slurmctld's log"
            jobs.setdefault(rule, []).append(job)
    return jobs


# ----------------------------------------------------------------- the mechanics, on a tiny workflow

TINY = r'''
rule all:
    input: "cpu.txt", "gpu.txt", "flaky.txt"

rule cpu:
    output: "cpu.txt"
    shell: "echo ${{SLURM_JOB_ID:-none}} ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

rule gpu:
    output: "gpu.txt"
    threads: 2
    resources: gpu=1
    shell: "echo ${{SLURM_JOB_ID:-none}} ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"

rule flaky:  # fails on its first attempt
    output: "flaky.txt"
    shell: "if [ ! -e tried ]; then touch tried; exit 1; fi; echo ${{SLURM_JOB_ID:-none}} > {output}"
'''


def test_profile_submits_cpu_gpu_and_retried_jobs(slurm: dict[str, str], tmp_path: Path) -> None:
    workdir = tmp_path / "tiny"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TINY)
    start = time.monotonic()
    log = _finish(_snakemake(workdir, "--workflow-profile", str(PROFILE), *FAST_POLL), timeout=600)
    print(f"tiny workflow on SLURM: {time.monotonic() - start:.0f} s")
    jobs = _check_went_through_slurm(slurm, log, workdir)
    assert set(jobs) == {"cpu", "gpu", "flaky"}, jobs.keys()  # `all` runs locally

    # the jobs ran inside SLURM allocations: SLURM set the job id, and a GPU only for the GPU job
    cpu_id, cpu_gpus = (workdir / "cpu.txt").read_text().split()
    gpu_id, gpu_gpus = (workdir / "gpu.txt").read_text().split()
    assert [cpu_id] == [j["JobId"] for j in jobs["cpu"]] and cpu_gpus == "none"
    assert [gpu_id] == [j["JobId"] for j in jobs["gpu"]] and gpu_gpus != "none"
    assert jobs["gpu"][0]["TresPerJob"] == "gres:gpu:1" and jobs["gpu"][0]["NumCPUs"] == "2"
    assert "TresPerJob" not in jobs["cpu"][0] or "gpu" not in jobs["cpu"][0]["TresPerJob"]
    assert all(j["JobState"] == "COMPLETED" for rule in ("cpu", "gpu") for j in jobs[rule])

    # retries from the profile: the failed job came back as a new SLURM job asking for twice as much
    first, second = jobs["flaky"]
    assert first["JobState"] == "FAILED" and second["JobState"] == "COMPLETED"
    assert (workdir / "flaky.txt").read_text().split() == [second["JobId"]]
    assert _mem_mb(second) == 2 * _mem_mb(first)
    assert _minutes(second["TimeLimit"]) == 2 * _minutes(first["TimeLimit"])


# ----------------------------------------------------------------- the real pipeline, local vs SLURM

DATASET = "slurmcheck"
EXTRA_CONFIG = f"""\
datasets:
  {DATASET}:
    format: synthetic
    synthetic: {{n_users: 400, n_items: 150, image_size: 32}}
    vlm: {{model: tiny-random, max_new_tokens: 16, batch_size: 32, shards: 2, gpus: 1}}
    train: {{max_epochs: 2, patience: 2, gpus: 1}}
"""
TARGET = f"results/{DATASET}/metrics.json"
# rules the target needs, all of which must have been SLURM jobs
PIPELINE_RULES = {
    "demo", "ingest", "kcore", "images", "build_tiny_vlm", "caption", "caption_gather",
    "encode_text", "encode_captions", "graph_user_item", "graph_item_knn", "graph_user_user",
    "train", "report_metrics",
}
GPU_RULES = {"caption", "train"}
# Training on CPU is not bit-for-bit repeatable from one run to the next (float32 sums in
# multithreaded kernels; Adam amplifies the noise in parameters with no gradient, such as an
# attention key bias): run outputs are compared up to that noise, everything else exactly.
TRAINING_TOLERANCE = {"float": {"rel_tol": 1e-4, "abs_tol": 1e-6}, "tensor": {"rtol": 1e-2, "atol": 1e-3}}
# JSON keys whose values differ between two runs of the same workflow (clocks, hosts, paths)
VOLATILE = re.compile(r"time|seconds|elapsed|duration|date|host|created|started|finished|path|dir$|provenance", re.I)


def _copy_workflow(dest: Path) -> Path:
    """The repository's own files (tracked or not ignored), without results/, into `dest`."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if name.startswith("results/") or not src.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / name)
    (dest / "slurmcheck.yaml").write_text(EXTRA_CONFIG)
    return dest


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not VOLATILE.search(str(k))}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _close(x, y, loose: bool) -> bool:
    """Equal; with `loose`, floats only up to float32 rounding noise (see TRAINING_TOLERANCE)."""
    import torch

    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(_close(x[k], y[k], loose) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(_close(a, b, loose) for a, b in zip(x, y))
    if isinstance(x, torch.Tensor):
        if not (isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape):
            return False
        if loose and x.is_floating_point():
            return torch.allclose(x, y, **TRAINING_TOLERANCE["tensor"])
        return torch.equal(x, y)
    if loose and isinstance(x, float) and isinstance(y, float):
        return math.isclose(x, y, **TRAINING_TOLERANCE["float"])
    return x == y


def _same(a: Path, b: Path, loose: bool = False) -> bool:
    """Whether two output files hold the same data (not necessarily the same bytes)."""
    suffix = a.suffix
    if suffix == ".npy":
        import numpy as np

        x, y = np.load(a, allow_pickle=False), np.load(b, allow_pickle=False)
        return x.dtype == y.dtype and np.array_equal(x, y)
    if suffix == ".npz":
        import numpy as np

        with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
            return sorted(x.files) == sorted(y.files) and all(np.array_equal(x[k], y[k]) for k in x.files)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(a).equals(pq.read_table(b))
    if suffix == ".json":
        return _close(_strip(json.loads(a.read_text())), _strip(json.loads(b.read_text())), loose)
    if suffix == ".pt":
        import torch

        x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
        return _close(_strip(x), _strip(y), loose)
    if suffix == ".gz":  # gzip headers carry a timestamp
        return gzip.decompress(a.read_bytes()) == gzip.decompress(b.read_bytes())
    return a.read_bytes() == b.read_bytes()


def _outputs(root: Path) -> set[str]:
    skip = {"logs", "benchmarks"}
    return {
        str(p.relative_to(root)) for p in root.rglob("*")
        if p.is_file() and not skip & set(p.relative_to(root).parts)
    }


def test_pipeline_on_slurm_matches_local_run(slurm: dict[str, str], tmp_path: Path) -> None:
    local = _copy_workflow(tmp_path / "local")
    cluster = _copy_workflow(tmp_path / "slurm")
    config = ("--configfile", "config/config.yaml", "slurmcheck.yaml", "--")
    start = time.monotonic()
    # Both at once: the SLURM run mostly waits on the scheduler, the local one fills the gaps.
    # --max-threads 2 on SLURM matches the local --cores 2, so each stage computes the same way.
    on_slurm = _snakemake(cluster, "--workflow-profile", "profiles/slurm", "--executor", "slurm",
                          "--max-threads", "2", *FAST_POLL, *config, TARGET)
    on_local = _snakemake(local, "--cores", "2", *config, TARGET)
    try:
        local_log = _finish(on_local)
        slurm_log = _finish(on_slurm)
    finally:  # one failed: do not leave the other running (SIGTERM makes snakemake scancel its jobs)
        for proc, _ in (on_slurm, on_local):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=120)
    print(f"demo pipeline, local and on SLURM side by side: {time.monotonic() - start:.0f} s")
    assert "SLURM jobid" not in local_log

    jobs = _check_went_through_slurm(slurm, slurm_log, cluster)
    assert PIPELINE_RULES <= set(jobs), f"rules that never went to SLURM: {PIPELINE_RULES - set(jobs)}"
    assert len({j["JobId"] for j in jobs["caption"]}) == 2, "the two caption shards were not two SLURM jobs"
    for rule, rule_jobs in jobs.items():
        for job in rule_jobs:
            assert job["JobState"] == "COMPLETED", (rule, job)
            assert job["NumCPUs"] in {"1", "2"}, (rule, job)  # threads capped by --max-threads 2
            gpus = job.get("TresPerJob", "")
            assert (gpus == "gres:gpu:1") == (rule in GPU_RULES), (rule, gpus)
    # the profile's per-rule requests reached sbatch
    assert _mem_mb(jobs["caption"][0]) == 32000 and _mem_mb(jobs["train"][0]) >= 16000
    assert _minutes(jobs["caption"][0]["TimeLimit"]) >= 60

    # same outputs as the local run
    ours, theirs = local / "results" / DATASET, cluster / "results" / DATASET
    names = _outputs(ours)
    assert names == _outputs(theirs), sorted(names ^ _outputs(theirs))
    different = sorted(
        n for n in names if not _same(ours / n, theirs / n, loose=n.startswith("runs/") or n == "metrics.json")
    )
    assert not different, f"outputs differ between the local and the SLURM run: {different}"
