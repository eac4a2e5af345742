"""Checkpoints: one file holding everything needed to resume a run exactly, written atomically.

Only tensors, numbers, strings, lists and dicts go in, so ``torch.load(weights_only=True)`` reads
it back without unpickling code.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from vlif_pipeline.io import StageError, atomic_path


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` via a temporary file and a rename (a kill never leaves half a file)."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | os.PathLike[str], device: torch.device) -> dict[str, Any] | None:
    """The saved state (tensors mapped to ``device``), or None when there is no checkpoint yet."""
    if not Path(path).exists():
        return None
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise StageError(f"{path}: unreadable checkpoint ({err}); delete it to restart training") from err


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
