"""The report stage on hand-written run files: the tables' layout, and clear errors for bad files."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
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


def test_a_run_whose_images_all_failed_says_so(tmp_path: Path) -> None:
    """147 of 147 items without an image once gave a metrics.json like any other; now it cannot."""
    run = write_run(tmp_path, "vlif__vlm_title__pid", figures(0.3))
    captions, manifest = tmp_path / "captions.parquet", tmp_path / "manifest.parquet"
    pl.DataFrame({"i": range(10), "status": ["text_only"] * 9 + ["ok"]}).write_parquet(captions)
    pl.DataFrame({"i": range(10), "status": ["http_error"] * 6 + ["missing_url"] * 3 + ["ok"]}).write_parquet(manifest)
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"n_users": 5, "n_items": 10}))
    config = {"vlm": {"model": "Qwen/Qwen2.5-VL-7B-Instruct"}, "train": {"visual": "vlm"}}
    visual = ["--variant", "vlm_title", "--captions", str(captions), "--manifest", str(manifest)]
    out = tmp_path / "metrics.json"
    assert cli.main(["metrics", "--run", str(run), "--stats", str(stats), "--config-json", json.dumps(config),
                     *visual, "--dataset", "toy", "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["visual"]["items_with_usable_image"] == 1 and metrics["visual"]["captions_text_only"] == 9
    assert metrics["visual"]["image_statuses"] == {"http_error": 6, "missing_url": 3, "ok": 1}
    assert any("only 1 of 10 items have a visual signal" in note for note in metrics["notes"])
    table = tmp_path / "t.md"
    assert cli.main(["table", "--runs", str(run), *visual, "--dataset", "toy", "--out", str(table)]) == 0
    assert ("Visual modality (VLM with title): 1 of 10 items had a usable image; 1 captions from an image, "
            "9 from the title alone") in table.read_text()


def write_sweep_runs(tmp_path: Path, valid: list[list[float]], test: list[list[float]]) -> list[dict]:
    """A grid plan of len(valid) points with one run per seed; each run's valid and test Recall@20 given."""
    plan = []
    for index, (valid_point, test_point) in enumerate(zip(valid, test, strict=True)):
        runs = []
        for seed, (v, t) in enumerate(zip(valid_point, test_point, strict=True)):
            metrics = figures(t)
            metrics["valid"] = {**metrics["valid"], "recall@20": v}
            runs.append(str(write_run(tmp_path, f"lightgcn@n_layers={index},seed={seed}", metrics)))
        plan.append({"settings": {"n_layers": index}, "runs": runs})
    return plan


def select(tmp_path: Path, plan: list[dict]) -> dict:
    out = tmp_path / "sweep" / "lightgcn.json"
    assert cli.main(["sweep", "--plan", json.dumps(plan), "--model", "lightgcn", "--dataset", "toy",
                     "--out", str(out), "--out-md", str(out.with_suffix(".md"))]) == 0
    return json.loads(out.read_text())


def test_selection_reads_validation_only(tmp_path: Path) -> None:
    """Permuting the test figures across the grid never changes the choice; the valid mean decides."""
    valid = [[0.20, 0.22], [0.25, 0.19], [0.21, 0.21], [0.18, 0.30]]  # means .21 .22 .21 .24
    test = [[0.50, 0.10], [0.11, 0.12], [0.90, 0.95], [0.13, 0.14]]
    for shift in range(4):
        permuted = test[shift:] + test[:shift]
        chosen = select(tmp_path / str(shift), write_sweep_runs(tmp_path / str(shift), valid, permuted))["chosen"]
        assert chosen["settings"] == {"n_layers": 3} and chosen["index"] == 3


def test_selection_ties_go_to_the_earlier_point_and_the_tables_show_mean_and_std(tmp_path: Path) -> None:
    selection = select(tmp_path, write_sweep_runs(tmp_path, [[0.2, 0.3], [0.3, 0.2]], [[0.1, 0.3], [0.9, 0.9]]))
    assert selection["chosen"]["index"] == 0
    assert selection["chosen"]["figures"]["valid recall@20"]["mean"] == pytest.approx(0.25)
    markdown = (tmp_path / "sweep" / "lightgcn.md").read_text()
    assert "| **chosen** | 0 | 0.2500 ± 0.0707 | 0.2000 ± 0.1414 |" in markdown
    table = tmp_path / "t.md"
    assert cli.main(["table", "--runs", str(tmp_path / "sweep" / "lightgcn.json"), "--dataset", "toy",
                     "--out", str(table)]) == 0
    assert "| LightGCN (n_layers=0) | **0.1000 ± 0.0707** | **0.2000 ± 0.1414** |" in table.read_text()


def test_paper_md_sets_each_row_beside_the_published_one_of_the_same_meaning(tmp_path: Path) -> None:
    runs = [write_run(tmp_path, run, figures(r20)) for run, r20 in (
        ("popularity", 0.05), ("bpr", 0.0690), ("freedom__original", 0.0992), ("freedom__vlm_title", 0.12),
        ("vlif__vlm_title__pid", 0.1083),
    )]
    ablation = [write_run(tmp_path, run, figures(0.1)) for run in ("vlif__original__pid", "vlif__vlm_title__concat")]
    out = tmp_path / "paper.md"
    argv = ["paper", "--runs", *map(str, runs), "--ablation-runs", *map(str, [ablation[0], runs[-1], ablation[1]]),
            "--published", "baby", "--dataset", "toy", "--out", str(out)]
    assert cli.main(argv) == 0
    text = out.read_text()
    assert "| BPR | BPR | 0.0345 | 0.0357 | -3.4% | 0.0690 | 0.0575 | +20.0% |" in text
    assert "| FREEDOM (Original) | FREEDOM | 0.0496 | 0.0627 | -20.9% | 0.0992 | 0.0992 | +0.0% |" in text
    assert "| FREEDOM (VLM with title) | not published | 0.0600 | - | - |" in text
    assert "| Popularity | not published |" in text
    assert "| VLIF (VLM with title) | VLIF | 0.0541 | 0.0705 | -23.2% | 0.1083 | 0.1083 | +0.0% |" in text
    assert "| VLIF (Original) | Original | 0.0500 | 0.0668 | -25.1% | 0.1000 | 0.1026 | -2.5% |" in text
    assert "| VLIF (VLM with title, Concat) | Concat |" in text
    assert cli.main([*argv[:-6], "--published", "demo", "--dataset", "toy", "--out", str(out)]) == 0
    assert "compared with nothing: the paper has no dataset 'demo'" in out.read_text()
    assert "| BPR | not published |" in out.read_text()
