"""Training steps: the eager step, the optimiser's device flags, and CUDA-graph replay (on a GPU)."""

from __future__ import annotations

import pytest
import torch

from test_vlif import SMALL, batch, tiny_data
from vlif_pipeline.models import build_model
from vlif_pipeline.training.sampler import TripleSampler
from vlif_pipeline.training.step import GraphedStep, eager_step, load_optimizer_state, make_optimizer, make_step
from vlif_pipeline.training.trainer import train_epoch


def test_eager_step_is_one_adam_step_on_the_loss() -> None:
    data = tiny_data()
    torch.manual_seed(0)
    model = build_model("vlif", data, SMALL)
    reference = build_model("vlif", data, SMALL)
    reference.load_state_dict(model.state_dict())
    users, pos, neg = batch(size=16)
    parts = eager_step(model, make_optimizer(model, 1e-2), users, pos, neg)
    optimiser = torch.optim.Adam(reference.parameters(), lr=1e-2)
    expected = reference.loss(users, pos, neg)
    expected["loss"].backward()
    optimiser.step()
    assert set(parts) == set(expected) and not any(value.requires_grad for value in parts.values())
    torch.testing.assert_close(parts["loss"], expected["loss"].detach())
    for (name, got), want in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want, msg=name)


def test_cpu_steps_are_eager() -> None:
    model = build_model("bpr", tiny_data(), {})
    step = make_step(model, make_optimizer(model, 1e-3), 8)
    assert not isinstance(step, GraphedStep)
    assert make_optimizer(model, 1e-3).param_groups[0]["capturable"] is False


def test_loading_a_checkpoint_keeps_the_device_flags() -> None:
    """A CPU run's optimiser state (capturable off) resumed where steps are captured keeps capturable on."""
    model = build_model("bpr", tiny_data(), {})
    saved = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=False)
    resumed = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
    load_optimizer_state(resumed, saved.state_dict())
    assert resumed.param_groups[0]["capturable"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("name", ["vlif", "lightgcn", "bpr", "freedom"])
def test_graphed_steps_train_like_eager_steps(name: str) -> None:
    """Same seed, same batches: the graphed run's losses and parameters follow the eager run's.

    On a GPU two eager runs differ too (sums by atomics), and Adam turns that rounding noise into
    updates where a gradient is exactly 0: the attention keys' bias, as softmax ignores a shift
    common to all keys. Eager against eager, VLIF's parameters differed by up to 1.2e-5 after these
    steps (H200), so they are compared at 1e-4, a tenth of one Adam step of lr 1e-3; a stale
    input or a missed update in the graph moves parameters by about lr per step.
    """
    data = tiny_data(device="cuda")
    params = {**SMALL, "restrict": False} if name == "vlif" else {}
    runs = []
    for graphed in (False, True):
        torch.manual_seed(0)
        model = build_model(name, data, params)
        optimiser = make_optimizer(model, 1e-3)
        if graphed:
            step = make_step(model, optimiser, 64)
        else:
            def step(u: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> dict[str, torch.Tensor]:
                return eager_step(model, optimiser, u, p, n)
        sampler = TripleSampler(data.train, 0)
        losses = [train_epoch(model, step, sampler, epoch, 64)["loss"] for epoch in range(1, 4)]
        if graphed:
            assert isinstance(step, GraphedStep) and step.graph is not None, step.error
        runs.append((losses, [p.detach().clone() for p in model.parameters()]))
    (eager_losses, eager_params), (graph_losses, graph_params) = runs
    assert graph_losses == pytest.approx(eager_losses, rel=1e-4)
    for eager_param, graph_param in zip(eager_params, graph_params, strict=True):
        torch.testing.assert_close(graph_param, eager_param, rtol=1e-3, atol=1e-4)
