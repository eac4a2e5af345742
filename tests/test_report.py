"""The report stage on hand-written run files: the tables' layout, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlif_pipeline.report import cli


def write_run(root: Path, run: str, metrics: object) -> Path:
    path = root / "runs" / run / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))
    return path


def figures(recall20: float) -> dict:
    test = {f"{name}@{k}": recall20 / 2 for name in ("recall", "ndcg", "precision", "map") for k in (5, 10, 20, 50)}
    test["recall@20"] = recall20
    return {"test": test, "valid": dict(test), "best_epoch": 3}


def test_table_rows_and_best_in_bold(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, "bpr", figures(0.1)), write_run(tmp_path, "vlif__vlm_title__pid", figures(0.3))]
    assert cli.main(["table", "--runs", *map(str, runs), "--dataset", "toy", "--out", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert "| BPR | 0.0500 | 0.1000 | 0.0500 | 0.0500 | 3 |" in table
    assert "| VLIF (VLM with title) | **0.1500** | **0.3000** |" in table


@pytest.mark.parametrize(
    ("run", "metrics", "message"),
    [
        ("bpr", [1, 2], "a JSON list, not an object"),
        ("bpr", {"test": [0.1]}, "no test recall@10 in the run's metrics"),
        ("bpr", {"test": {**figures(0.1)["test"], "recall@10": "abc"}}, "test recall@10 is 'abc', not a finite number"),
        ("bpr", {"test": {**figures(0.1)["test"], "recall@20": None}}, "test recall@20 is None, not a finite number"),
        ("vlif__fancy__pid", figures(0.1), "run 'vlif__fancy__pid': not a run name this pipeline produces"),
    ],
)
def test_bad_run_files_fail_with_one_clear_line(tmp_path: Path, run: str, metrics: object, message: str) -> None:
    path = write_run(tmp_path, run, metrics)
    log = tmp_path / "log.txt"
    assert cli.main(["table", "--runs", str(path), "--dataset", "toy", "--out", str(tmp_path / "t.md"),
                     "--log", str(log)]) == 1
    assert message in log.read_text() and "Traceback" not in log.read_text()
    assert not (tmp_path / "t.md").exists()


def test_a_nan_metric_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "runs" / "bpr" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(figures(0.1)).replace("0.1,", "NaN,", 1))
    assert cli.main(["table", "--runs", str(path), "--dataset", "toy", "--out", str(tmp_path / "t.md")]) == 1
