"""One optimisation step per batch, and on CUDA the same step replayed from a captured CUDA graph.

Why a graph: on a GPU, a VLIF step (two modality propagations, the fusion transformers and four
InfoNCE terms, forward and backward, then Adam) is about a thousand small kernels, and launching
them one by one from Python takes longer than running them. A CUDA graph records the kernels of
one step once and replays them with a single launch. That needs a step with fixed shapes and no
host synchronisation (models say so with ``Recommender.graphable``) and a capturable optimiser.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import torch

from vlif_pipeline.cuda_streams import warmup_stream
from vlif_pipeline.models.base import Recommender
from vlif_pipeline.training.allocator import keep_freed_memory

Step = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
LOG = logging.getLogger(__name__)


def make_optimizer(model: Recommender, learning_rate: float) -> torch.optim.Adam:
    """Fused Adam; on CUDA also capturable (its step counter lives on the device, so no host sync)."""
    cuda = next(model.parameters()).device.type == "cuda"
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True, capturable=cuda)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimiser state but keep this optimiser's ``capturable`` flags.

    Why: the flags depend on the device, and a checkpoint may come from a run on another one.
    """
    capturable = [group.get("capturable", False) for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, flag in zip(optimizer.param_groups, capturable, strict=True):
        group["capturable"] = flag


def eager_step(
    model: Recommender, optimizer: torch.optim.Optimizer, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Loss, backward and optimiser step for one batch of triples (B,); returns the detached loss parts."""
    parts = model.loss(users, pos, neg)
    optimizer.zero_grad(set_to_none=True)
    parts["loss"].backward()
    optimizer.step()
    return {key: value.detach() for key, value in parts.items()}


class GraphedStep:
    """:func:`eager_step` for every batch, replayed from one CUDA graph for the full batches.

    The first ``warmup`` full batches run eagerly on a side stream (libraries initialise lazily,
    which must not happen during capture), the next one is captured and then replayed, as is every
    later full batch; a shorter batch (an epoch's last) runs eagerly. Every batch is one real step,
    none repeated or skipped, so training computes what the eager loop computes up to the order of
    floating-point atomics. The returned parts are the graph's output buffers: the next replay
    overwrites them, so read or copy them before the next call. When capture fails, the error is
    logged and every later step runs eagerly (``error`` holds it).
    """

    def __init__(
        self, model: Recommender, optimizer: torch.optim.Optimizer, batch_size: int, warmup: int = 3
    ) -> None:
        self.model, self.optimizer, self.batch_size, self.warmup = model, optimizer, batch_size, warmup
        self.graph: torch.cuda.CUDAGraph | None = None
        self.error: str | None = None
        self.inputs: tuple[torch.Tensor, ...] = ()
        self.parts: dict[str, torch.Tensor] = {}
        self.side = warmup_stream(next(model.parameters()).device)

    def __call__(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        if users.numel() != self.batch_size or self.error is not None:
            return eager_step(self.model, self.optimizer, users, pos, neg)
        if self.graph is not None:
            for static, value in zip(self.inputs, (users, pos, neg), strict=True):
                static.copy_(value)
            self.graph.replay()
            return self.parts
        if self.warmup > 0:
            self.warmup -= 1
            self.side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(self.side):
                parts = eager_step(self.model, self.optimizer, users, pos, neg)
            torch.cuda.current_stream().wait_stream(self.side)
            return parts
        return self._capture(users, pos, neg)

    def _capture(self, users: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> dict[str, torch.Tensor]:
        """Record this batch's step (capture runs nothing), then replay it once to take the step."""
        self.inputs = (users.clone(), pos.clone(), neg.clone())
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's pool
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.parts = eager_step(self.model, self.optimizer, *self.inputs)
        except RuntimeError as err:
            self.error = f"{type(err).__name__}: {err}"
            LOG.warning("CUDA graph capture of %s's training step failed, training eagerly: %s",
                        type(self.model).__name__, self.error)
            return eager_step(self.model, self.optimizer, users, pos, neg)
        self.graph = graph
        graph.replay()
        return self.parts


def make_step(model: Recommender, optimizer: torch.optim.Optimizer, batch_size: int, graphs: bool = True) -> Step:
    """The step function for ``model``: graphed on CUDA when ``graphs`` and the model allow it, else eager
    (with the C library's malloc set to keep the step's freed buffers: training/allocator.py)."""
    if graphs and next(model.parameters()).device.type == "cuda" and model.graphable:
        return GraphedStep(model, optimizer, batch_size)
    keep_freed_memory()
    return functools.partial(eager_step, model, optimizer)
