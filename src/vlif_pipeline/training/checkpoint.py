"""Checkpoints: one file holding everything needed to resume a run exactly, written atomically.

Only tensors, numbers, strings, lists and dicts go in, so ``torch.load(weights_only=True)`` reads
it back without unpickling code.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from vlif_pipeline.io import StageError, atomic_path


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename (a kill never leaves half a file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be read; it was moved aside to ``moved_to`` (nothing is deleted)."""

    def __init__(self, path: Path, moved_to: Path, reason: str) -> None:
        super().__init__(f"{path}: unreadable checkpoint ({reason}); moved aside to {moved_to.name}")
        self.moved_to = moved_to


def load_checkpoint(path: str | os.PathLike[str], device: torch.device) -> dict[str, Any] | None:
    """The saved state (tensors mapped to ``device``), or None when there is no checkpoint yet.

    A damaged one (truncated by a full disk, overwritten by hand) is renamed to
    ``checkpoint.pt.damaged-<UTC time>`` and reported by :class:`DamagedCheckpoint`, so that the run
    can start over without destroying what may still be worth a look.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        moved_to = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            path.rename(moved_to)
        except OSError as rename_error:
            raise StageError(f"{path}: unreadable checkpoint ({err}), and it cannot be moved aside: {rename_error}") from err
        raise DamagedCheckpoint(path, moved_to, str(err)[:300]) from err


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state (a snapshot that later training steps do not change)."""
    return {key: value.detach().to("cpu", copy=True) for key, value in module.state_dict().items()}


def rng_state() -> dict[str, Any]:
    """The torch CPU and CUDA generator states."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only when CUDA is present)."""
    torch.set_rng_state(state["cpu"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
