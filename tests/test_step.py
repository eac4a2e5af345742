"""Training steps: the eager step, the optimiser's device flags, and CUDA-graph replay (on a GPU)."""

from __future__ import annotations

import subprocess
import sys

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


def test_cpu_steps_are_eager_and_keep_freed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr("vlif_pipeline.training.step.keep_freed_memory", lambda: calls.append(1))
    model = build_model("bpr", tiny_data(), {})
    step = make_step(model, make_optimizer(model, 1e-3), 8)
    assert not isinstance(step, GraphedStep)
    assert calls == [1]
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


FAULTS_SCRIPT = """
import ctypes, ctypes.util, resource, sys
from vlif_pipeline.training.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def step():  # eight 4 MB buffers written and freed, as InfoNCE's exponentials in a VLIF step
    blocks = [libc.malloc(4 << 20) for _ in range(8)]
    for block in blocks:
        ctypes.memset(block, 1, 4 << 20)
    for block in blocks:
        libc.free(block)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    step()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds: Linux only")
def test_a_steps_freed_buffers_are_not_faulted_in_again() -> None:
    """By default glibc returns the freed 32 MB to the kernel and the next step faults its 8,192
    pages in again; with the setting that make_step applies the memory is reused."""
    counts = {
        mode: int(
            subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], check=True, capture_output=True, text=True).stdout
        )
        for mode in ("default", "keep")
    }
    assert counts["default"] > 2 * 8192, counts  # the premise: freed memory went back to the kernel
    assert counts["keep"] < 1024, counts
