"""Stage ``recommend``: a trained run's top-k items for every user (``recommendations.parquet``), or
for one user, printed with titles.

The model is rebuilt from the run's ``metrics.json`` (model, settings, the files it was trained
on) with the weights of its best validation epoch (``best_model`` in ``checkpoint.pt``), and scored
exactly as the evaluator scores, each user's training items excluded.

    python -m vlif_pipeline recommend --run results/demo/runs/vlif__vlm_title__pid --user A2X3 --k 10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from vlif_pipeline.io import StageError, atomic_path, run_stage, setup_logging
from vlif_pipeline.models import build_model, native
from vlif_pipeline.models.base import Recommender
from vlif_pipeline.training.checkpoint import load_checkpoint
from vlif_pipeline.training.data import TrainData, load_train_data, resolve_device
from vlif_pipeline.training.evaluator import top_k
from vlif_pipeline.training.trainer import split_params

OUTPUT_SCHEMA = {
    "u": pl.Int64, "user_id": pl.String, "rank": pl.Int32, "i": pl.Int64, "item_id": pl.String, "score": pl.Float32,
}


def run_dir(path: Path) -> Path:
    """The run folder named by ``path``: a run folder, its metrics.json, or a sweep selection
    (``sweep/{model}.json``), which stands for the first run of its chosen point."""
    if path.is_dir():
        return path
    if path.parent.name == "sweep":
        return Path(json.loads(path.read_text())["chosen"]["runs"][0]).parent
    return path.parent


def load_run(path: Path, device: torch.device) -> tuple[Recommender, TrainData, dict[str, Any]]:
    """The run's model at its best validation epoch, on the data it was trained on, and its metrics."""
    folder = run_dir(path)
    try:
        metrics = json.loads((folder / "metrics.json").read_text())
        inputs = metrics["inputs"]
    except (OSError, ValueError, KeyError) as err:
        raise StageError(f"{folder}: not a finished run with its inputs recorded ({type(err).__name__}: {err})") from None
    settings, model_params, _ = split_params(metrics["model"], metrics["params"])
    native.configure(settings["native"])
    data = load_train_data(**inputs, device=device)
    model = build_model(metrics["model"], data, model_params)
    saved = load_checkpoint(folder / "checkpoint.pt", device)
    if saved is None:
        raise StageError(f"{folder / 'checkpoint.pt'}: no checkpoint beside the run's metrics")
    model.load_state_dict(saved["best_model"])
    model.eval()
    return model, data, metrics


@torch.no_grad()
def recommend(
    model: Recommender, data: TrainData, users: np.ndarray, k: int, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Item ids and scores (len(users), k) of each user's k best items, training items excluded."""
    model.prepare_eval()
    k = min(k, data.n_items)
    items, scores = [], []
    for start in range(0, users.size, batch_size):
        batch = users[start : start + batch_size]
        values = model.score_users(torch.from_numpy(batch).to(data.device)).clone()
        seen = data.train[batch]
        rows = np.repeat(np.arange(batch.size), np.diff(seen.indptr))
        values[torch.from_numpy(rows).to(data.device), torch.from_numpy(seen.indices.astype(np.int64)).to(data.device)] = (
            float("-inf")
        )
        best, where = top_k(values, k)
        items.append(where.cpu().numpy())
        scores.append(best.float().cpu().numpy())
    return np.concatenate(items), np.concatenate(scores)


def recommendations_frame(
    users: np.ndarray, items: np.ndarray, scores: np.ndarray, user_ids: list[str], item_ids: list[str]
) -> pl.DataFrame:
    """One row per (user, rank): u, user_id, rank (1 = best), i, item_id (asin), score."""
    k = items.shape[1]
    flat = items.reshape(-1)
    return pl.DataFrame(
        {
            "u": np.repeat(users, k),
            "user_id": [user_ids[u] for u in np.repeat(users, k)],
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), users.size),
            "i": flat,
            "item_id": [item_ids[i] for i in flat],
            "score": scores.reshape(-1),
        },
        schema=OUTPUT_SCHEMA,
    )


def find_user(users: pl.DataFrame, user: str) -> int:
    """Internal id ``u`` of a user given by original id, or by ``u`` itself."""
    match = users.filter(pl.col("user_id") == user)
    if match.height:
        return int(match["u"][0])
    if user.isdigit() and int(user) < users.height:
        return int(user)
    raise StageError(f"no user {user!r} (neither a user_id nor an id u below {users.height})")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="recommend", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, help="a run folder, its metrics.json or a sweep selection")
    parser.add_argument("--user", help="one user's list, printed (original user_id, or u); default: every user")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", type=Path, help="recommendations.parquet for every user")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    log = setup_logging(args.log, "recommend")

    def body() -> None:
        if args.k < 1 or (args.user is None) == (args.out is None):
            raise StageError("give --k >= 1 and either --user (one list, printed) or --out (every user)")
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        model, data, metrics = load_run(args.run, resolve_device(args.device))
        kcore = Path(metrics["inputs"]["kcore_dir"])
        user_table = pl.read_parquet(kcore / "users.parquet")
        item_table = pl.read_parquet(kcore / "items.parquet", columns=["i", "item_id", "title"])
        users = np.arange(data.n_users) if args.user is None else np.array([find_user(user_table, args.user)])
        items, scores = recommend(model, data, users, args.k)
        frame = recommendations_frame(users, items, scores, user_table["user_id"].to_list(), item_table["item_id"].to_list())
        if args.out is not None:
            with atomic_path(args.out) as tmp:
                frame.write_parquet(tmp)
            log.info("%s: top %d of %s for %d users -> %s", metrics["model"], items.shape[1], run_dir(args.run),
                     users.size, args.out)
            return
        titles = item_table["title"].to_list()
        print(f"user {frame['user_id'][0]} (u={users[0]}), {metrics['model']} from {run_dir(args.run)}:")
        for row in frame.iter_rows(named=True):
            print(f"{row['rank']:>3}. {row['item_id']}  {row['score']:8.4f}  {titles[row['i']]}")

    return run_stage(body, log)
