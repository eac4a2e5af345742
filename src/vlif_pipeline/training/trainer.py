"""The one training loop every model shares: BPR triples, Adam, early stopping, exact resume.

Per epoch: ``model.start_epoch()``, one pass over the sampler's shuffled triples in batches,
an evaluation on the validation split every ``eval_every`` epochs, then a checkpoint and the history
(both atomic). Early stopping watches validation Recall@20 (``patience`` evaluations without a
strict improvement); the reported valid and test metrics are those of the best validation epoch.
A killed run restarts from its last checkpoint and, since the sampler is seeded per epoch and the
model, optimiser and torch RNG states are restored, ends with the same result as an unkilled one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlif_pipeline.codedeps import PACKAGE, stage_sources
from vlif_pipeline.io import StageError, duration, write_json
from vlif_pipeline.models import build_model, native
from vlif_pipeline.models.base import Recommender
from vlif_pipeline.registry import MODELS, TRAINER_DEFAULTS
from vlif_pipeline.training.checkpoint import (
    DamagedCheckpoint,
    cpu_state_dict,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vlif_pipeline.training.data import TrainData
from vlif_pipeline.training.evaluator import Evaluator
from vlif_pipeline.training.sampler import TripleSampler
from vlif_pipeline.training.step import Step, load_optimizer_state, make_optimizer, make_step

STOP_METRIC = "recall@20"
CHECKPOINT, HISTORY, METRICS = "checkpoint.pt", "history.json", "metrics.json"


def split_params(model: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """(trainer settings, model hyperparameters, ignored keys) from one flat params object.

    A key that belongs to another registered model is ignored (and reported), so one params file
    can serve several models; a key no model and not the trainer knows is an error (a typo).
    """
    own = MODELS[model].defaults
    others = {key for name, entry in MODELS.items() if name != model for key in entry.defaults}
    unknown = sorted(set(params) - set(TRAINER_DEFAULTS) - set(own) - others)
    if unknown:
        raise StageError(
            f"unknown parameter(s) {unknown} for model {model!r}; trainer keys: {sorted(TRAINER_DEFAULTS)}, "
            f"model keys: {sorted(own)}"
        )
    trainer = {**TRAINER_DEFAULTS, **{k: v for k, v in params.items() if k in TRAINER_DEFAULTS}}
    for key in ("batch_size", "max_epochs", "patience", "eval_every", "eval_batch_size"):
        if not isinstance(trainer[key], int) or isinstance(trainer[key], bool) or trainer[key] < 1:
            raise StageError(f"parameter {key!r} must be a positive integer, got {trainer[key]!r}")
    if not isinstance(trainer["seed"], int) or isinstance(trainer["seed"], bool) or trainer["seed"] < 0:
        raise StageError(f"parameter 'seed' must be a non-negative integer, got {trainer['seed']!r}")
    if trainer["native"] not in native.MODES:
        raise StageError(f"parameter 'native' must be 'auto', true or false, got {trainer['native']!r}")
    rate = trainer["learning_rate"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate < math.inf:
        raise StageError(f"parameter 'learning_rate' must be a positive number, got {rate!r}")
    model_params = {k: v for k, v in params.items() if k in own}
    ignored = sorted(set(params) - set(TRAINER_DEFAULTS) - set(own))
    return trainer, model_params, ignored


def _code_digest() -> bytes:
    """sha256 of the train stage's source files (contents, not times; ``codedeps``)."""
    digest = hashlib.sha256()
    for path in stage_sources("train"):
        digest.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.digest()


def _fingerprint(model: str, trainer: dict[str, Any], hparams: dict[str, Any], data: TrainData) -> str:
    """Identifies a run: configuration, every input array and the training code.

    Why all three: Snakemake reruns a training job when its inputs or code change, and the job must
    then start afresh; only a run killed part way (same inputs, same code) resumes its checkpoint.
    """
    digest = hashlib.sha256(_code_digest())
    for matrix in (data.train, data.valid, data.test):
        for array in (matrix.indptr, matrix.indices):
            digest.update(np.ascontiguousarray(array).tobytes())
    tensors = [data.text, data.visual]
    for graph in (data.user_item, data.item_knn, data.user_user):
        tensors += [None] if graph is None else [graph.crow_indices(), graph.col_indices(), graph.values()]
    for tensor in tensors:
        digest.update(b"none" if tensor is None else tensor.detach().cpu().contiguous().numpy().tobytes())
    spec = {"model": model, "trainer": trainer, "hparams": hparams, "shape": [data.n_users, data.n_items]}
    digest.update(json.dumps(spec, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def train_epoch(
    model: Recommender, step: Step, sampler: TripleSampler, epoch: int, batch_size: int
) -> dict[str, float]:
    """One pass over the epoch's shuffled triples through ``step``; returns the mean of every loss part.

    Loss parts are summed on the device and read once at the end (no per-batch host sync on a GPU).
    """
    model.train()
    model.start_epoch()
    device = next(model.parameters()).device
    users, pos, neg = (torch.from_numpy(a).to(device) for a in sampler.epoch(epoch))
    sums: dict[str, torch.Tensor] = {}
    n_batches = 0
    for start in range(0, users.numel(), batch_size):
        stop = start + batch_size
        for key, value in step(users[start:stop], pos[start:stop], neg[start:stop]).items():
            # out of place: a graphed step's parts are buffers that its next replay overwrites
            sums[key] = sums[key] + value if key in sums else value.clone()
        n_batches += 1
    return {key: float(total) / n_batches for key, total in sums.items()}


class Trainer:
    """Trains one model configuration into ``out_dir`` (checkpoint.pt, history.json, metrics.json)."""

    def __init__(
        self,
        model_name: str,
        data: TrainData,
        params: dict[str, Any],
        out_dir: Path,
        logger: logging.Logger,
        inputs: dict[str, str | None] | None = None,
    ) -> None:
        self.inputs = inputs or {}  # the files the data came from, for metrics.json (the recommend stage reloads them)
        self.model_name = model_name
        self.data = data
        self.out_dir = Path(out_dir)
        self.logger = logger
        self.settings, model_params, ignored = split_params(model_name, params)
        if ignored:
            logger.warning("parameters %s belong to other models and are ignored by %s", ignored, model_name)
        torch.manual_seed(self.settings["seed"])
        native.configure(self.settings["native"])
        try:
            if data.device.type == "cpu":
                native.spmm_kernel()  # built now, so that its note (or failure) comes first
            self.model: Recommender = build_model(model_name, data, model_params)
        except ValueError as err:
            raise StageError(f"model {model_name!r}: {err}") from err
        except native.NativeUnavailable as err:
            raise StageError(f"native is true, but a CPU kernel is unavailable: {err}") from err
        self._log_native_notes()
        self.hparams = dict(self.model.hparams)
        self.fingerprint = _fingerprint(model_name, self.settings, self.hparams, data)
        batch = self.settings["eval_batch_size"]
        self.valid_eval = Evaluator(data.train, data.valid, data.device, batch)
        self.test_eval = Evaluator(data.train, data.test, data.device, batch)
        if self.valid_eval.n_users == 0:
            raise StageError("no user has both training and validation interactions: nothing to early-stop on")

    def run(self) -> dict[str, Any]:
        """Train (or resume) to the end, write metrics.json and return its content."""
        if not self.model.trainable:
            return self._finish(best_epoch=0, epochs_run=0, stopped_reason="no_parameters", seconds=0.0, history=[])
        state = self._train()
        self.model.load_state_dict(state["best_model"])
        return self._finish(
            best_epoch=state["best_epoch"],
            epochs_run=state["epoch"],
            stopped_reason=state["stopped_reason"],
            seconds=state["seconds"],
            history=state["history"],
        )

    def _fresh_state(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint,
            "epoch": 0,
            "best_epoch": 0,
            "best_valid": -1.0,
            "bad_evals": 0,
            "stopped_reason": "",
            "seconds": 0.0,
            "history": [],
            "best_model": cpu_state_dict(self.model),
        }

    def _train(self) -> dict[str, Any]:
        settings = self.settings
        optimizer = make_optimizer(self.model, settings["learning_rate"])
        path = self.out_dir / CHECKPOINT
        state = self._resume(path, optimizer) or self._fresh_state()
        sampler = TripleSampler(self.data.train, settings["seed"])
        batch_size = settings["batch_size"]
        step = make_step(self.model, optimizer, batch_size)
        while not state["stopped_reason"] and state["epoch"] < settings["max_epochs"]:
            epoch = state["epoch"] + 1
            started = time.perf_counter()
            parts = train_epoch(self.model, step, sampler, epoch, batch_size)
            train_seconds = time.perf_counter() - started
            if not all(math.isfinite(v) for v in parts.values()):
                kept = f"the last good checkpoint (epoch {state['epoch']}) is kept in {path}" if state["epoch"] else (
                    "no checkpoint was written"
                )
                raise StageError(
                    f"training diverged: loss parts {parts} at epoch {epoch}; {kept}. "
                    "Lower learning_rate or check the inputs."
                )
            record: dict[str, Any] = {"epoch": epoch, "loss": parts, "train_seconds": round(train_seconds, 4)}
            eval_seconds = 0.0
            if epoch % settings["eval_every"] == 0 or epoch == settings["max_epochs"]:
                started = time.perf_counter()
                valid = self.valid_eval.evaluate(self.model)
                eval_seconds = time.perf_counter() - started
                record.update(valid=valid, eval_seconds=round(eval_seconds, 4))
                if valid[STOP_METRIC] > state["best_valid"]:
                    state.update(best_valid=valid[STOP_METRIC], best_epoch=epoch, bad_evals=0)
                    state["best_model"] = cpu_state_dict(self.model)
                else:
                    state["bad_evals"] += 1
                if state["bad_evals"] >= settings["patience"]:
                    state["stopped_reason"] = "early_stopping"
            state["seconds"] += train_seconds + eval_seconds
            state["epoch"] = epoch
            if epoch == settings["max_epochs"] and not state["stopped_reason"]:
                state["stopped_reason"] = "max_epochs"
            state["history"].append(record)
            self._log_native_notes()  # the kernels' verdicts, measured at their first calls
            self._log_epoch(record, state)
            resumable = {"model": self.model.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state()}
            save_checkpoint(path, {**state, **resumable})
            write_json(self.out_dir / HISTORY, {"model": self.model_name, "epochs": state["history"]})
        if not state["stopped_reason"]:
            state["stopped_reason"] = "max_epochs"
        return state

    def _resume(self, path: Path, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
        """Restore model, optimiser and RNG from ``path`` when it belongs to this configuration."""
        try:
            saved = load_checkpoint(path, self.data.device)
        except DamagedCheckpoint as damaged:
            self.logger.warning("%s: starting from scratch", damaged)
            return None
        if saved is None:
            return None
        if saved.get("fingerprint") != self.fingerprint:
            self.logger.warning("%s belongs to another configuration or dataset: starting from scratch", path)
            return None
        self.model.load_state_dict(saved.pop("model"))
        load_optimizer_state(optimizer, saved.pop("optimizer"))
        set_rng_state(saved.pop("rng"))
        self.logger.info("resumed from %s after epoch %d", path, saved["epoch"])
        return saved

    def _log_native_notes(self) -> None:
        for level, note in native.take_notes():
            self.logger.log(level, "%s", note)

    def _log_epoch(self, record: dict[str, Any], state: dict[str, Any]) -> None:
        loss = ", ".join(f"{k} {v:.4f}" for k, v in record["loss"].items())
        valid = f", valid {STOP_METRIC} {record['valid'][STOP_METRIC]:.4f}" if "valid" in record else ""
        left = self.settings["max_epochs"] - record["epoch"]
        eta = f"; at most {duration(left * state['seconds'] / record['epoch'])} to max_epochs" if left else ""
        self.logger.info(
            "epoch %d/%d: %s%s (%.2f s train; best epoch %d%s)",
            record["epoch"], self.settings["max_epochs"], loss, valid, record["train_seconds"], state["best_epoch"], eta,
        )

    def _finish(
        self, best_epoch: int, epochs_run: int, stopped_reason: str, seconds: float, history: list[dict[str, Any]]
    ) -> dict[str, Any]:
        """Evaluate the (best) model on valid and test, write metrics.json (and the files of a parameter-free run)."""
        metrics = {
            "model": self.model_name,
            "params": {**self.settings, **self.hparams},
            "valid": self.valid_eval.evaluate(self.model),
            "test": self.test_eval.evaluate(self.model),
            "best_epoch": best_epoch,
            "epochs_run": epochs_run,
            "stopped_reason": stopped_reason,
            "seconds": round(seconds, 3),
            "device": str(self.data.device),
            "inputs": self.inputs,
            "compute": native.provenance(),  # the two training paths round differently: say which ran
            "n_users": self.data.n_users,
            "n_items": self.data.n_items,
            "n_eval_users": {"valid": self.valid_eval.n_users, "test": self.test_eval.n_users},
        }
        if not self.model.trainable:
            state = {**self._fresh_state(), "stopped_reason": stopped_reason, "model": self.model.state_dict()}
            save_checkpoint(self.out_dir / CHECKPOINT, state)
        # also when a finished checkpoint was resumed: Snakemake removed the job's outputs before rerunning it
        write_json(self.out_dir / HISTORY, {"model": self.model_name, "epochs": history})
        write_json(self.out_dir / METRICS, metrics)
        self.logger.info(
            "%s: best epoch %d of %d (%s); valid %s %.4f, test %s %.4f",
            self.model_name, best_epoch, epochs_run, stopped_reason,
            STOP_METRIC, metrics["valid"][STOP_METRIC], STOP_METRIC, metrics["test"][STOP_METRIC],
        )
        return metrics
