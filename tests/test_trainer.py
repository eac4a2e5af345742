"""The train stage: contract files, determinism, exact resume after SIGKILL, NaN handling, bad input."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from vlif_pipeline.graphs.user_item import normalised_adjacency
from vlif_pipeline.io import StageError
from vlif_pipeline.models.bpr import BPRMF
from vlif_pipeline.training import run
from vlif_pipeline.training import trainer as trainer_module
from vlif_pipeline.training.data import (
    TEST,
    TRAIN,
    VALID,
    TrainData,
    build_train_data,
    load_train_data,
    split_matrices,
)
from vlif_pipeline.training.metrics import metric_keys
from vlif_pipeline.training.sampler import TripleSampler
from vlif_pipeline.training.synthetic import make_synthetic, write_run_inputs
from vlif_pipeline.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    synthetic = make_synthetic(300, 120, 3000, dim_text=16, dim_visual=16, seed=7)
    return write_run_inputs(synthetic, tmp_path_factory.mktemp("inputs"), k=5)


def cli_args(inputs: dict[str, Path], model: str, out_dir: Path, params: dict) -> list[str]:
    return [
        "--model", model, "--kcore-dir", str(inputs["kcore_dir"]), "--user-item", str(inputs["user_item"]),
        "--text", str(inputs["text"]), "--visual", str(inputs["visual"]), "--item-knn", str(inputs["item_knn"]),
        "--user-user", str(inputs["user_user"]), "--params-json", json.dumps(params), "--out-dir", str(out_dir),
        "--device", "cpu", "--threads", "1",
    ]


def result(out_dir: Path) -> dict:
    metrics = json.loads((out_dir / "metrics.json").read_text())
    return {key: metrics[key] for key in ("valid", "test", "best_epoch", "epochs_run", "stopped_reason")}


def test_cli_writes_the_contract_files(inputs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "runs" / "lightgcn__t"
    params = {"max_epochs": 3, "batch_size": 256, "learning_rate": 0.01}
    assert run.main(cli_args(inputs, "lightgcn", out, params) + ["--log", str(tmp_path / "train.log")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        assert set(metrics[split]) == set(metric_keys())
        assert all(0.0 <= v <= 1.0 for v in metrics[split].values())
    assert metrics["model"] == "lightgcn" and metrics["device"] == "cpu"
    assert metrics["epochs_run"] == 3 and metrics["stopped_reason"] == "max_epochs"
    assert 1 <= metrics["best_epoch"] <= 3
    assert metrics["params"]["learning_rate"] == 0.01 and metrics["params"]["n_layers"] == 2
    history = json.loads((out / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert {"loss", "bpr", "reg"} <= set(history[0]["loss"]) and "recall@20" in history[0]["valid"]
    assert history[metrics["best_epoch"] - 1]["valid"] == metrics["valid"]
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 3 and {"model", "optimizer", "rng", "best_model"} <= set(checkpoint)
    assert not list(out.glob(".*part"))
    log = (tmp_path / "train.log").read_text()
    assert "epoch 3/3:" in log and "epoch 1/3:" in log and "to max_epochs)" in log  # progress: epochs and ETA
    compute = metrics["compute"]
    assert compute["cpu"] and compute["native"] == "auto" and compute["march"]
    if shutil.which("cc"):  # LightGCN's sparse products: which path ran, and why
        assert compute["paths"]["spmm forward"]["path"] in ("kernel", "pytorch")


def test_popularity_is_evaluated_once(inputs: dict[str, Path], tmp_path: Path) -> None:
    assert run.main(cli_args(inputs, "popularity", tmp_path, {})) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["epochs_run"] == 0 and metrics["stopped_reason"] == "no_parameters"
    assert metrics["test"]["recall@20"] > 0
    assert (tmp_path / "checkpoint.pt").exists() and (tmp_path / "history.json").exists()


def test_deterministic_for_a_fixed_seed(inputs: dict[str, Path], tmp_path: Path) -> None:
    params = {"max_epochs": 3, "batch_size": 256, "seed": 3}
    for name in ("a", "b"):
        assert run.main(cli_args(inputs, "freedom", tmp_path / name, params)) == 0
    assert result(tmp_path / "a") == result(tmp_path / "b")
    assert run.main(cli_args(inputs, "freedom", tmp_path / "c", {**params, "seed": 4})) == 0
    assert result(tmp_path / "c")["valid"] != result(tmp_path / "a")["valid"]


def test_killed_run_resumes_to_the_same_result(inputs: dict[str, Path], tmp_path: Path) -> None:
    params = {"max_epochs": 6, "batch_size": 16, "seed": 1, "learning_rate": 0.005}
    assert run.main(cli_args(inputs, "freedom", tmp_path / "straight", params)) == 0

    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "vlif_pipeline", "train", *cli_args(inputs, "freedom", killed, params)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = killed / "history.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if history.exists() and len(json.loads(history.read_text())["epochs"]) >= 2:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "metrics.json").exists(), "the run finished before it could be killed"
    epochs_done = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    assert 2 <= epochs_done < 6

    assert run.main(cli_args(inputs, "freedom", killed, params) + ["--log", str(tmp_path / "resume.log")]) == 0
    assert f"resumed from {killed / 'checkpoint.pt'} after epoch {epochs_done}" in (tmp_path / "resume.log").read_text()
    assert result(killed) == result(tmp_path / "straight")
    straight = json.loads((tmp_path / "straight" / "history.json").read_text())["epochs"]
    resumed = json.loads(history.read_text())["epochs"]
    assert [h["loss"] for h in resumed] == [h["loss"] for h in straight]


def test_checkpoint_of_another_configuration_is_not_resumed(inputs: dict[str, Path], tmp_path: Path) -> None:
    assert run.main(cli_args(inputs, "bpr", tmp_path, {"max_epochs": 2})) == 0
    assert run.main(cli_args(inputs, "bpr", tmp_path, {"max_epochs": 3, "learning_rate": 0.002})) == 0
    history = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_finished_run_whose_outputs_were_removed_writes_them_again(inputs: dict[str, Path], tmp_path: Path) -> None:
    """As Snakemake does before rerunning a job: outputs removed, the checkpoint left in place."""
    assert run.main(cli_args(inputs, "bpr", tmp_path, {"max_epochs": 2})) == 0
    first = result(tmp_path)
    history = (tmp_path / "history.json").read_text()
    for name in ("metrics.json", "history.json"):
        (tmp_path / name).unlink()
    assert run.main(cli_args(inputs, "bpr", tmp_path, {"max_epochs": 2})) == 0
    assert result(tmp_path) == first and (tmp_path / "history.json").read_text() == history


def test_checkpoint_from_other_features_is_not_resumed(inputs: dict[str, Path], tmp_path: Path) -> None:
    out, log = tmp_path / "run", tmp_path / "second.log"
    assert run.main(cli_args(inputs, "freedom", out, {"max_epochs": 2})) == 0
    changed = dict(inputs, visual=tmp_path / "visual.npy")
    np.save(changed["visual"], np.load(inputs["visual"])[:, ::-1].copy())  # new captions, same shape
    assert run.main(cli_args(changed, "freedom", out, {"max_epochs": 2}) + ["--log", str(log)]) == 0
    assert "belongs to another configuration" in log.read_text() and "resumed" not in log.read_text()
    assert [h["epoch"] for h in json.loads((out / "history.json").read_text())["epochs"]] == [1, 2]


def test_checkpoint_from_other_training_code_is_not_resumed(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run.main(cli_args(inputs, "bpr", tmp_path, {"max_epochs": 2})) == 0
    monkeypatch.setattr(trainer_module, "_code_digest", lambda: b"edited model code")
    assert run.main(cli_args(inputs, "bpr", tmp_path, {"max_epochs": 3})) == 0
    history = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[0]["epoch"] == 1
    assert json.loads((tmp_path / "metrics.json").read_text())["epochs_run"] == 3


def test_early_stopping_on_validation(inputs: dict[str, Path], tmp_path: Path) -> None:
    params = {"max_epochs": 50, "patience": 2, "learning_rate": 1e-12}  # no improvement after epoch 1
    assert run.main(cli_args(inputs, "bpr", tmp_path, params)) == 0
    assert result(tmp_path)["stopped_reason"] == "early_stopping"
    assert result(tmp_path)["best_epoch"] == 1 and result(tmp_path)["epochs_run"] == 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    inputs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = BPRMF.loss
    calls = {"n": 0}

    def exploding(self, users, pos, neg):  # noqa: ANN001, ANN202
        calls["n"] += 1
        parts = original(self, users, pos, neg)
        if calls["n"] > 2 * batches_per_epoch:
            parts["loss"] = parts["loss"] * float("nan")
        return parts

    data = load_train_data(inputs["kcore_dir"], None, None, inputs["user_item"], None, None, "cpu")
    batches_per_epoch = -(-data.train.nnz // 256)
    monkeypatch.setattr(BPRMF, "loss", exploding)
    trainer = Trainer("bpr", data, {"max_epochs": 10, "batch_size": 256}, tmp_path, logging.getLogger("t"))
    with pytest.raises(StageError, match="diverged.*epoch 3.*last good checkpoint \\(epoch 2\\)"):
        trainer.run()
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert checkpoint["epoch"] == 2
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values())
    assert not (tmp_path / "metrics.json").exists()


def test_bad_inputs_fail_with_clear_messages(
    inputs: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = {**inputs, "user_item": tmp_path / "nope.npz"}
    assert run.main(cli_args(missing, "bpr", tmp_path / "a", {})) == 1
    wrong = {**inputs, "text": inputs["visual"].with_name("short.npy")}
    np.save(wrong["text"], np.zeros((5, 3), dtype=np.float32))
    assert run.main(cli_args(wrong, "bpr", tmp_path / "b", {})) == 1
    assert run.main(cli_args(inputs, "bpr", tmp_path / "c", {"learnig_rate": 1})) == 1
    assert run.main(cli_args(inputs, "bpr", tmp_path / "d", {"batch_size": 0})) == 1
    assert run.main(cli_args(inputs, "bpr", tmp_path / "e", [1, 2])) == 1  # type: ignore[arg-type]
    log = tmp_path / "e.log"
    run.main(cli_args(missing, "bpr", tmp_path / "f", {}) + ["--log", str(log)])
    assert "nope.npz: cannot read" in log.read_text()
    run.main(cli_args(wrong, "bpr", tmp_path / "g", {}) + ["--log", str(log)])
    assert "short.npy: expected shape (120, dim), got (5, 3)" in log.read_text()
    run.main(cli_args(inputs, "bpr", tmp_path / "h", {"learnig_rate": 1}) + ["--log", str(log)])
    assert "unknown parameter(s) ['learnig_rate']" in log.read_text()
    assert not any((tmp_path / name / "metrics.json").exists() for name in "abcdef")


def _corrupt_graph(source: Path, target: Path, what: str) -> Path:
    """A copy of a .npz graph whose first column index points past the matrix (a crash, not an error,
    before) or whose first weight is negative."""
    with np.load(source) as archive:
        arrays = {key: value.copy() for key, value in archive.items()}
    if what == "graph-index":
        arrays["indices"][0] = arrays["shape"][1] + 5
    else:
        arrays["data"][0] = -1.0
    np.savez(target, **arrays)
    return target


def _write_npy_variants(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    (folder / "empty.npy").write_bytes(b"")
    np.savez(folder / "archive.npz", x=np.zeros((120, 16), np.float32))
    (folder / "archive.npz").rename(folder / "archive.npy")
    np.save(folder / "words.npy", np.array([["a"] * 16] * 120))
    return {name: folder / f"{name}.npy" for name in ("empty", "archive", "words")}


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("graph-index", "malformed sparse matrix"),
        ("graph-weight", "knn.npz: has negative edge weights"),
        ("empty", "empty.npy: cannot read as .npy"),
        ("archive", "archive.npy: an .npz archive, not a .npy array"),
        ("words", "words.npy: dtype <U1 is not a real number type"),
    ],
)
def test_corrupt_files_fail_with_one_clear_line(
    inputs: dict[str, Path], tmp_path: Path, case: str, message: str
) -> None:
    args = dict(inputs)
    out = tmp_path / "run"
    if case.startswith("graph"):
        args["item_knn"] = _corrupt_graph(inputs["item_knn"], tmp_path / "knn.npz", case)
    else:
        args["text"] = _write_npy_variants(tmp_path / "npy")[case]
    log = tmp_path / "log.txt"
    assert run.main(cli_args(args, "vlif", out, {"max_epochs": 1}) + ["--log", str(log)]) == 1
    assert message in log.read_text() and "Traceback" not in log.read_text()


def test_a_damaged_checkpoint_is_moved_aside_and_training_starts_over(inputs: dict[str, Path], tmp_path: Path) -> None:
    """A truncated checkpoint must neither stop training until deleted by hand nor be deleted."""
    out = tmp_path / "run"
    params = {"max_epochs": 2, "batch_size": 256}
    assert run.main(cli_args(inputs, "bpr", out, params)) == 0
    expected = result(out)
    damaged = (out / "checkpoint.pt").read_bytes()[:1000]
    (out / "checkpoint.pt").write_bytes(damaged)
    for name in ("metrics.json", "history.json"):  # as when Snakemake reruns the job
        (out / name).unlink()
    log = tmp_path / "log.txt"
    assert run.main(cli_args(inputs, "bpr", out, params) + ["--log", str(log)]) == 0
    (aside,) = out.glob("checkpoint.pt.damaged-*")
    assert aside.read_bytes() == damaged
    assert "WARNING" in log.read_text() and f"moved aside to {aside.name}: starting from scratch" in log.read_text()
    assert result(out) == expected, "the fresh run ends where the first one did"


def test_a_split_without_test_interactions_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    kcore = tmp_path / "kcore"
    shutil.copytree(inputs["kcore_dir"], kcore)
    table = pq.read_table(kcore / "interactions.parquet")
    split = np.asarray(table.column("split"))
    no_test = pa.array(np.where(split == 2, 1, split).astype(split.dtype))  # test interactions become valid
    table = table.set_column(table.schema.get_field_index("split"), "split", no_test)
    pq.write_table(table, kcore / "interactions.parquet")
    log = tmp_path / "log.txt"
    assert run.main(cli_args({**inputs, "kcore_dir": kcore}, "bpr", tmp_path / "run", {}) + ["--log", str(log)]) == 1
    assert "no test interactions (split == 2)" in log.read_text()


def test_params_of_other_models_are_ignored_and_reported(inputs: dict[str, Path], tmp_path: Path) -> None:
    log = tmp_path / "log"
    params = {"max_epochs": 1, "edge_drop": 0.5}
    assert run.main(cli_args(inputs, "bpr", tmp_path / "run", params) + ["--log", str(log)]) == 0
    assert "['edge_drop'] belong to other models" in log.read_text()


def test_params_json_from_a_file(inputs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"max_epochs": 1}))
    args = cli_args(inputs, "bpr", tmp_path / "run", {})
    args[args.index("--params-json") + 1] = str(path)
    assert run.main(args) == 0
    assert result(tmp_path / "run")["epochs_run"] == 1


def test_sampler_negatives_reproducible_and_never_positive(inputs: dict[str, Path]) -> None:
    data = load_train_data(inputs["kcore_dir"], None, None, inputs["user_item"], None, None, "cpu")
    sampler = TripleSampler(data.train, seed=0)
    users, pos, neg = sampler.epoch(1)
    assert users.size == data.train.nnz == len(sampler)
    assert np.all(np.asarray(data.train[users, pos]).ravel() == 1)
    assert not np.asarray(data.train[users, neg]).any()
    assert sorted(zip(users.tolist(), pos.tolist())) == sorted(zip(*data.train.nonzero()))
    again = sampler.epoch(1)
    assert all(np.array_equal(a, b) for a, b in zip((users, pos, neg), again, strict=True))
    assert not np.array_equal(sampler.epoch(2)[2], neg)


def test_fingerprint_tells_apart_held_out_items_moved_between_users() -> None:
    """Same training data and held-out item ids, but owned by other users: another run, not a resume."""
    n_users, n_items = 2, 8

    def data(held: list[tuple[int, int, int]]) -> TrainData:
        rows = [(0, 0, TRAIN), (0, 1, TRAIN), (1, 0, TRAIN), (1, 1, TRAIN), *held]
        users, items, split = (np.array(column) for column in zip(*rows, strict=True))
        train, valid, test = split_matrices(users, items, split, n_users, n_items)
        return build_train_data(n_users, n_items, train, valid, test, normalised_adjacency(train))

    spread = data([(0, 3, VALID), (1, 4, VALID), (0, 5, TEST), (1, 6, TEST)])
    moved = data([(0, 3, VALID), (0, 4, VALID), (1, 5, TEST), (1, 6, TEST)])
    assert np.array_equal(spread.valid.indices, moved.valid.indices)
    assert np.array_equal(spread.test.indices, moved.test.indices)
    fingerprints = {trainer_module._fingerprint("bpr", {}, {}, d) for d in (spread, moved)}
    assert len(fingerprints) == 2
