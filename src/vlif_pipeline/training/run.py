"""Stage ``train``: train and evaluate one model configuration into ``--out-dir``.

Writes ``checkpoint.pt`` (every epoch), ``history.json`` (every epoch) and ``metrics.json`` (at the
end: valid and test metrics at the best validation epoch). Rerunning on the same out dir resumes
from the checkpoint when it belongs to the same configuration and data.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from vlif_pipeline.io import StageError, run_stage, setup_logging
from vlif_pipeline.models import MODELS
from vlif_pipeline.training.data import load_train_data, resolve_device
from vlif_pipeline.training.trainer import Trainer


INPUTS = ("kcore_dir", "text", "visual", "user_item", "item_knn", "user_user")  # load_train_data's files


def read_params(value: str) -> dict[str, Any]:
    """``--params-json``: a path to a JSON file, or an inline JSON object (starts with ``{``)."""
    source = "--params-json"
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise StageError(f"{path}: params file not found")
        source, text = str(path), path.read_text()
    try:
        params = json.loads(text)
    except json.JSONDecodeError as err:
        raise StageError(f"{source}: not valid JSON ({err})") from err
    if not isinstance(params, dict):
        raise StageError(f"{source}: expected a JSON object of parameters, got {type(params).__name__}")
    return params


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train", description="train and evaluate one recommender")
    parser.add_argument("--model", required=True, choices=sorted(MODELS))
    parser.add_argument("--kcore-dir", required=True, help="interactions.parquet + stats.json")
    parser.add_argument("--user-item", required=True, help="graphs/user_item.npz")
    parser.add_argument("--text", help="text features .npy (I, D_t)")
    parser.add_argument("--visual", help="visual features .npy (I, D_v)")
    parser.add_argument("--item-knn", help="graphs/item_knn__{variant}__k{k}__w{weight}.npz")
    parser.add_argument("--user-user", help="graphs/user_user__k{k}.npz")
    parser.add_argument("--params-json", default="{}", help="JSON file or inline object of hyperparameters")
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--log")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logger = setup_logging(args.log, "train")

    def body() -> None:
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        params = read_params(args.params_json)
        device = resolve_device(args.device)
        logger.info("model %s on %s, params %s", args.model, device, json.dumps(params, sort_keys=True))
        inputs = {name: getattr(args, name) for name in INPUTS}
        data = load_train_data(**inputs, device=device)
        logger.info(
            "%s: %d users, %d items, %d/%d/%d train/valid/test interactions",
            args.kcore_dir, data.n_users, data.n_items, data.train.nnz, data.valid.nnz, data.test.nnz,
        )
        Trainer(args.model, data, params, Path(args.out_dir), logger, inputs).run()

    return run_stage(body, logger)
