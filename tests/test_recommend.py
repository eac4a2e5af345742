"""The recommend stage: a trained run's top-k per user, training items excluded, as the evaluator ranks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from vlif_pipeline.training import recommend, run
from vlif_pipeline.training.evaluator import top_k
from vlif_pipeline.training.synthetic import make_synthetic, write_run_inputs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rec")
    synthetic = make_synthetic(200, 80, 2000, dim_text=16, dim_visual=16, seed=3)
    inputs = write_run_inputs(synthetic, root, k=5)
    kcore = Path(inputs["kcore_dir"])
    pl.DataFrame({"u": range(200), "user_id": [f"U{u:03d}" for u in range(200)]}).write_parquet(kcore / "users.parquet")
    pl.DataFrame({"i": range(80), "item_id": [f"B{i:03d}" for i in range(80)],
                  "title": [f"product {i}" for i in range(80)]}).write_parquet(kcore / "items.parquet")
    out = root / "runs" / "lightgcn"
    args = ["--model", "lightgcn", "--kcore-dir", str(kcore), "--user-item", str(inputs["user_item"]),
            "--params-json", json.dumps({"max_epochs": 3, "batch_size": 128}), "--out-dir", str(out), "--device", "cpu"]
    assert run.main(args) == 0
    return out


def test_every_user_gets_k_unseen_items_ranked_as_the_evaluator_ranks(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "recommendations.parquet"
    assert recommend.main(["--run", str(trained), "--k", "10", "--out", str(out)]) == 0
    frame = pl.read_parquet(out)
    assert frame.columns == list(recommend.OUTPUT_SCHEMA) and frame.height == 200 * 10
    model, data, _ = recommend.load_run(trained, torch.device("cpu"))
    seen = {(u, i) for u, i in zip(*data.train.nonzero(), strict=True)}
    assert not any((u, i) in seen for u, i in frame.select("u", "i").iter_rows()), "a training item was recommended"
    assert frame.filter(pl.col("u") == 5)["rank"].to_list() == list(range(1, 11))
    with torch.no_grad():  # the evaluator's way: score, mask the training items, top-k
        model.prepare_eval()
        scores = model.score_users(torch.arange(200))
        rows, cols = data.train.nonzero()
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = float("-inf")
        values, items = top_k(scores, 10)
    np.testing.assert_array_equal(frame["i"].to_numpy().reshape(200, 10), items.numpy())
    np.testing.assert_allclose(frame["score"].to_numpy().reshape(200, 10), values.numpy(), rtol=1e-6)
    assert (frame["score"].to_numpy().reshape(200, 10)[:, :-1] >= frame["score"].to_numpy().reshape(200, 10)[:, 1:]).all()


def test_one_users_list_is_printed_with_titles(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert recommend.main(["--run", str(trained / "metrics.json"), "--user", "U007", "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("user U007 (u=7), lightgcn from") and len(lines) == 4
    assert lines[1].lstrip().startswith("1. B") and "product " in lines[1]
    log = trained.parent / "bad.log"
    assert recommend.main(["--run", str(trained), "--user", "nobody", "--log", str(log)]) == 1
    assert "no user 'nobody'" in log.read_text()
