"""The C kernels (models/native.py, models/kernels/*.c) against the PyTorch operations they replace."""

from __future__ import annotations

import logging
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from test_vlif import batch, tiny_data
from vlif_pipeline.io import StageError
from vlif_pipeline.models import native
from vlif_pipeline.models.fusion import CrossModalBlock, RedundancyEncoder, info_nce
from vlif_pipeline.models.native import CrossBlockKernel, NativeUnavailable, RedundancyKernel, SpmmKernel
from vlif_pipeline.models.propagation import to_torch_sparse
from vlif_pipeline.models.vlif import VLIF
from vlif_pipeline.codedeps import stage_sources
from vlif_pipeline.training.trainer import split_params

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the kernels")

DIM, HEADS, FFN = 64, 4, 64


@pytest.fixture(autouse=True)
def fresh_mode() -> Iterator[None]:
    """Each test starts with the kernels required (so that every comparison runs them, whatever a
    calibration would choose), an empty build cache, no verdicts and no pending notes; it ends in
    the default mode."""
    native._load.cache_clear()
    native.configure(True)
    native.forget_verdicts()
    native.take_notes()
    yield
    native._load.cache_clear()
    native.forget_verdicts()
    native.configure("auto")


def _level_runs_here(level: str) -> str | None:
    """Why kernels built for ``level`` cannot be tested here, or None when they can."""
    needs = {"native": None, "x86-64-v3": "avx2", "x86-64-v2": "sse4_2"}[level]
    if needs is not None:
        cpuinfo = Path("/proc/cpuinfo")
        if platform.machine() != "x86_64" or not cpuinfo.exists() or needs not in cpuinfo.read_text().split():
            return f"this CPU cannot run {level} code (no {needs})"
    compiler = os.environ.get("CC", "cc")
    probe = subprocess.run([compiler, f"-march={level}", "-x", "c", "-E", "-"], input="", capture_output=True)
    return None if probe.returncode == 0 else f"{compiler} does not accept -march={level}"


@pytest.fixture(params=["native", "x86-64-v3", "x86-64-v2"])
def level(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The ISA level the kernels are built for: this CPU's, AVX2 (8-float vectors) and SSE4.2 (4-float
    vectors, the blocking ARM's NEON gets too). Each must give the same values and gradients."""
    why = _level_runs_here(request.param)
    if why:
        pytest.skip(why)
    monkeypatch.setenv("VLIF_KERNEL_MARCH", request.param)
    return request.param


def randomise(module: torch.nn.Module) -> None:
    """Parameters far from their initial values (LayerNorm at identity, gains 0.01 hide mistakes)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, 0.3)


Grads = tuple[torch.Tensor, list[torch.Tensor | None]]


def gradients(module: torch.nn.Module, inputs: list[torch.Tensor], run: Callable[[], torch.Tensor]) -> Grads:
    """Output of ``run()`` and the gradients of a fixed random projection of it: inputs', then parameters'
    (None for a parameter the output does not use)."""
    module.zero_grad()
    for x in inputs:
        x.grad = None
    out = run()
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * weight).sum().backward()
    grads = [x.grad for x in [*inputs, *module.parameters()]]
    return out.detach(), [None if g is None else g.clone() for g in grads]


def assert_same(a: Grads, b: Grads) -> None:
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    for k, (ga, gb) in enumerate(zip(a[1], b[1], strict=True)):
        if ga is None or gb is None:
            assert ga is gb, f"gradient {k} is missing on one side"
            continue
        scale = gb.abs().max().clamp_min(1e-6)
        assert (ga - gb).abs().max() <= 1e-5 * scale, f"gradient {k} differs"


@pytest.mark.parametrize(("n", "n_tokens"), [(37, 3), (16, 2), (5, 4)])
def test_cross_block_kernel_equals_the_module(n: int, n_tokens: int, level: str) -> None:
    """Values and every gradient, for node counts that do and do not fill the 16-node tiles."""
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    randomise(block)
    query = torch.randn(n, DIM, requires_grad=True)
    tokens = torch.randn(n, n_tokens, DIM, requires_grad=True)
    expected = gradients(block, [query, tokens], lambda: block(query, tokens))
    block.kernel = CrossBlockKernel(DIM, n_tokens, HEADS, FFN)
    assert_same(gradients(block, [query, tokens], lambda: block(query, tokens)), expected)


@pytest.mark.parametrize("n", [37, 16, 1])
def test_redundancy_kernel_equals_the_module(n: int, level: str) -> None:
    encoder = RedundancyEncoder(DIM, HEADS, FFN, 0.01)
    randomise(encoder)
    v, t = torch.randn(n, DIM, requires_grad=True), torch.randn(n, DIM, requires_grad=True)
    expected = gradients(encoder, [v, t], lambda: encoder.encode(v, t))
    encoder.kernel = RedundancyKernel(DIM, HEADS, FFN)
    assert_same(gradients(encoder, [v, t], lambda: encoder.encode(v, t)), expected)


@pytest.mark.parametrize(("n", "keep"), [(1024, True), (575, False), (37, True), (1, False), (1100, True)])
def test_info_nce_kernel_equals_torch(n: int, keep: bool, level: str) -> None:
    """Row counts that fill the 4-row and 64-column blocks and ones that are padded; masked rows;
    the last larger than the first, so that the backward's per-thread buffer must grow."""
    torch.manual_seed(0)
    a, b = torch.randn(n, DIM, requires_grad=True), torch.randn(n, DIM, requires_grad=True)
    mask = torch.rand(n) > 0.3 if keep else None
    results = []
    for mode in (True, False):
        native.configure(mode)
        a.grad = b.grad = None
        loss = info_nce(a, b, 0.2, mask)
        loss.backward()
        results.append((loss.detach(), a.grad, b.grad))
    for fused, plain in zip(*results, strict=True):
        torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-7)


def test_info_nce_kernel_backward_runs_once() -> None:
    kernel = native.InfoNceKernel(DIM)
    a, b = torch.randn(8, DIM, requires_grad=True), torch.randn(8, DIM, requires_grad=True)
    rows, cols = kernel(a, b, torch.ones(8), 0.2)
    (rows.sum() + cols.sum()).backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="runs once"):
        rows.sum().backward()


def test_a_strided_upstream_gradient_is_read_correctly(level: str) -> None:
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    randomise(block)
    query, tokens = torch.randn(40, DIM, requires_grad=True), torch.randn(40, 3, DIM, requires_grad=True)
    weight = torch.randn(DIM, 40)
    expected = gradients(block, [query, tokens], lambda: block(query, tokens).t() * weight)
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    assert_same(gradients(block, [query, tokens], lambda: block(query, tokens).t() * weight), expected)


def test_kernels_are_deterministic_and_keep_nan() -> None:
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    randomise(block)
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    query, tokens = torch.randn(300, DIM, requires_grad=True), torch.randn(300, 3, DIM, requires_grad=True)
    first, second = (gradients(block, [query, tokens], lambda: block(query, tokens)) for _ in range(2))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    with torch.no_grad():
        poisoned = query.clone()
        poisoned[7, 3] = float("nan")
        out = block(poisoned, tokens)
    assert torch.isnan(out[7]).all() and not torch.isnan(out[8]).any(), "a NaN must show, in its own node only"


def vlif_pair(**params: object) -> tuple[VLIF, VLIF]:
    """The same VLIF (same initial weights) built with the kernels required and with them off."""
    data = tiny_data()
    shape = {"embedding_dim": DIM, "n_heads": HEADS, "ffn_dim": FFN, "mlp_hidden": 32, "layer_scale": 0.5}
    models = []
    for mode in (True, False):
        native.configure(mode)
        torch.manual_seed(0)
        models.append(VLIF(data, {**shape, **params}))
    return models[0], models[1]


@pytest.mark.parametrize("restrict", [True, False])
def test_vlif_with_kernels_equals_vlif_without(restrict: bool, level: str) -> None:
    fused, plain = vlif_pair(restrict=restrict)
    assert fused.redundancy.kernel is not None and plain.redundancy.kernel is None
    users, pos, neg = batch(size=16)
    native.configure(True)
    out_f = fused.loss(users, pos, neg)
    out_f["loss"].backward()
    native.configure(False)  # PyTorch's sparse products too
    out_p = plain.loss(users, pos, neg)
    out_p["loss"].backward()
    for key in out_p:
        torch.testing.assert_close(out_f[key], out_p[key])
    for (name, p_f), p_p in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p_f.grad, p_p.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        native.configure(True)
        scores = fused.score_users(users)
        native.configure(False)
        torch.testing.assert_close(scores, plain.score_users(users))


@pytest.mark.parametrize("width", [64, 192, 40, 1])
def test_spmm_kernel_equals_torch(width: int, level: str) -> None:
    """Widths with 64-float blocks, 16-float blocks and a scalar remainder; empty rows; repeated columns."""
    rng = np.random.default_rng(0)
    matrix = sp.random(300, 200, density=0.03, random_state=0, dtype=np.float32, format="lil")
    matrix[5] = 0  # an empty row
    adj = to_torch_sparse(matrix)
    assert int(adj.crow_indices()[6] - adj.crow_indices()[5]) == 0
    x = torch.from_numpy(rng.normal(size=(200, width)).astype(np.float32))
    torch.testing.assert_close(SpmmKernel()(adj, x), torch.sparse.mm(adj, x))
    assert native.sparse_mm(adj, x[:, :1].expand(-1, 3)).shape == (300, 3), "strided input"


def test_sparse_mm_leaves_autograd_and_other_dtypes_to_torch() -> None:
    adj = to_torch_sparse(sp.eye(4, dtype=np.float32, format="csr"))
    x = torch.ones(4, 2, requires_grad=True)
    native.sparse_mm(adj, x).sum().backward()  # PyTorch's product, which has a backward
    torch.testing.assert_close(x.grad, torch.ones(4, 2))
    assert native.sparse_mm(adj.to(torch.float64), x.detach().double()).dtype == torch.float64
    with pytest.raises(RuntimeError):  # PyTorch's own shape error, not a read past the end
        native.sparse_mm(adj, torch.ones(3, 2))


def test_unavailable_kernels_fail_when_required_and_fall_back_with_a_warning(monkeypatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(NativeUnavailable, match="no C compiler 'no-such-compiler'"):
        vlif_pair()
    native.configure("auto")
    model = VLIF(tiny_data(), {"embedding_dim": DIM})
    assert model.redundancy.kernel is None
    notes = native.take_notes()
    assert [level for level, _ in notes] == [logging.WARNING]
    assert "using PyTorch's ops instead (slower)" in notes[0][1]
    assert native.spmm_kernel() is None


def test_kernels_are_built_once_into_the_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    kernel = RedundancyKernel(DIM, HEADS, FFN)
    assert kernel.path.parent == tmp_path / "vlif_pipeline" / "kernels"
    built = kernel.path.stat().st_mtime_ns
    native._load.cache_clear()
    assert RedundancyKernel(DIM, HEADS, FFN).path.stat().st_mtime_ns == built, "rebuilt"
    assert [p.name for p in kernel.path.parent.iterdir()] == [kernel.path.name], "leftover build files"


def test_unsupported_shapes_are_refused() -> None:
    with pytest.raises(NativeUnavailable, match="multiples of 64"):
        CrossBlockKernel(48, 3, 4, 64)


def test_a_failed_build_names_the_compiler_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native, "KERNEL_DIR", tmp_path)
    (tmp_path / "broken.c").write_text("this is not C\n")
    with pytest.raises(NativeUnavailable, match=r"compiling broken\.c failed"):
        native.load("broken", ())


def test_an_unwritable_cache_is_reported(monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file, so no folder can be made under it
    with pytest.raises(NativeUnavailable, match="cannot build into"):
        RedundancyKernel(DIM, HEADS, FFN)


def test_modes_are_validated() -> None:
    with pytest.raises(ValueError, match="native must be 'auto', true or false"):
        native.configure("yes")
    with pytest.raises(StageError, match="parameter 'native' must be 'auto', true or false"):
        split_params("bpr", {"native": "yes"})


def test_the_resume_fingerprint_covers_the_kernels() -> None:
    """A kernel edit must restart training, not resume a checkpoint computed by the old kernel."""
    names = {path.name for path in stage_sources("train")}
    assert {"cross_block.c", "redundancy.c", "infonce.c", "spmm.c", "common.h", "native.py"} <= names


def test_building_vlif_notes_every_kernel_it_uses() -> None:
    """The trainer logs these notes right after building the model: all kernels must be in them."""
    VLIF(tiny_data(), {"embedding_dim": DIM})
    notes = " ".join(message for _, message in native.take_notes())
    for name in ("infonce", "cross_block", "redundancy"):
        assert f"/{name}-" in notes, name


def test_a_wide_block_runs_and_matches(level: str) -> None:
    """d 128, feed-forward 512: the tile state (on the heap) is several times the default one."""
    block = CrossModalBlock(128, 8, 512, 0.01)
    randomise(block)
    query, tokens = torch.randn(21, 128, requires_grad=True), torch.randn(21, 3, 128, requires_grad=True)
    expected = gradients(block, [query, tokens], lambda: block(query, tokens))
    block.kernel = CrossBlockKernel(128, 3, 8, 512)
    assert_same(gradients(block, [query, tokens], lambda: block(query, tokens)), expected)


def test_inputs_the_kernels_were_not_built_for_take_the_pytorch_path() -> None:
    """Another token count or dtype would make C read past its buffers: such calls go to PyTorch."""
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    randomise(block)
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    query, tokens = torch.randn(9, DIM), torch.randn(9, 2, DIM)
    assert not block.kernel.accepts(query, tokens)
    with torch.no_grad():
        out = block(query, tokens)
        block.kernel = None
        torch.testing.assert_close(out, block(query, tokens))
    kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    assert not kernel.accepts(query.double(), torch.randn(9, 3, DIM, dtype=torch.float64))
    assert not native.InfoNceKernel(DIM).accepts(query, query[:, :32])


def test_sparse_mm_with_other_index_types_or_layouts_matches_torch() -> None:
    matrix = sp.random(50, 40, density=0.1, random_state=1, dtype=np.float32, format="csr")
    adj = to_torch_sparse(matrix)
    x = torch.randn(40, 64)
    expected = torch.sparse.mm(adj, x)
    int32 = torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices().int(), adj.values(), size=adj.shape)
    torch.testing.assert_close(native.sparse_mm(int32, x), expected)
    spread = torch.zeros(2 * adj.values().numel())
    spread[::2] = adj.values()  # values as a strided view
    strided = torch.sparse_csr_tensor(adj.crow_indices(), adj.col_indices(), spread[::2], size=adj.shape)
    torch.testing.assert_close(native.sparse_mm(strided, x), expected)


def test_double_backward_through_a_kernel_is_refused() -> None:
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    query = torch.randn(5, DIM, requires_grad=True)
    with pytest.raises(RuntimeError, match="no second derivatives"):
        torch.autograd.grad(block(query, torch.randn(5, 3, DIM)).pow(2).sum(), query, create_graph=True)


def test_a_damaged_cache_file_is_rebuilt(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "first"))
    name = RedundancyKernel(DIM, HEADS, FFN).path.name  # the same key, so the same name, anywhere
    damaged = tmp_path / "second" / "vlif_pipeline" / "kernels" / name
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"")  # e.g. a crash that left an empty file (not one this process has loaded)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "second"))
    native._load.cache_clear()
    assert RedundancyKernel(DIM, HEADS, FFN).path == damaged and damaged.stat().st_size > 0


class FakeTimer:
    """Stands in for native.measure: returns fixed timings and counts its calls."""

    def __init__(self, kernel_seconds: float, torch_seconds: float) -> None:
        self.verdict = native.Verdict(kernel_seconds, torch_seconds)
        self.calls = 0

    def __call__(self, kernel_run: Callable[[], object], torch_run: Callable[[], object]) -> native.Verdict:
        self.calls += 1
        return self.verdict


def count_kernel_calls(monkeypatch: pytest.MonkeyPatch, kernel_class: type) -> list[int]:
    calls = [0]
    original = kernel_class.__call__

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls[0] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(kernel_class, "__call__", counted)
    return calls


@pytest.mark.parametrize(("kernel_seconds", "used"), [(2.0, False), (0.5, True)])
def test_auto_keeps_a_kernel_only_where_its_calibration_found_it_faster(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kernel_seconds: float, used: bool
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "measure", FakeTimer(kernel_seconds, 1.0))
    calls = count_kernel_calls(monkeypatch, CrossBlockKernel)
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    randomise(block)
    query, tokens = torch.randn(40, DIM, requires_grad=True), torch.randn(40, 3, DIM, requires_grad=True)
    expected = gradients(block, [query, tokens], lambda: block(query, tokens))
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    native.configure("auto")
    assert_same(gradients(block, [query, tokens], lambda: block(query, tokens)), expected)
    assert (calls[0] > 0) is used
    path = native.provenance()["paths"]["cross_block forward+backward"]  # type: ignore[index]
    assert path == {
        "path": "kernel" if used else "pytorch",
        "chosen_by": "measured (native: auto)",
        "sizes": [64],
        "kernel_ms": kernel_seconds * 1e3,
        "pytorch_ms": 1000.0,
    }
    notes = " ".join(message for _, message in native.take_notes())
    assert f"kernel {kernel_seconds * 1e3:.2f} ms, PyTorch 1000.00 ms" in notes
    assert ("using the kernel" if used else "using PyTorch's ops") in notes


def test_a_slower_kernel_is_left_out_of_a_whole_training_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Under auto with every kernel measured slower, a VLIF step runs none of them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(native, "measure", FakeTimer(2.0, 1.0))
    counts = {cls: count_kernel_calls(monkeypatch, cls) for cls in (CrossBlockKernel, RedundancyKernel, SpmmKernel)}
    native.configure("auto")
    model = VLIF(tiny_data(), {"embedding_dim": DIM})
    assert model.redundancy.kernel is not None, "built, and then measured"
    model.loss(*batch(size=16))["loss"].backward()
    assert {cls.__name__: count[0] for cls, count in counts.items()} == {
        "CrossBlockKernel": 0, "RedundancyKernel": 0, "SpmmKernel": 0
    }
    assert {site: used["path"] for site, used in native.provenance()["paths"].items()} == {  # type: ignore[union-attr]
        "spmm forward": "pytorch",
        "cross_block forward+backward": "pytorch",
        "redundancy forward+backward": "pytorch",
        "infonce forward+backward": "pytorch",
    }


def test_required_kernels_are_never_measured(monkeypatch: pytest.MonkeyPatch) -> None:
    timer = FakeTimer(2.0, 1.0)
    monkeypatch.setattr(native, "measure", timer)
    calls = count_kernel_calls(monkeypatch, CrossBlockKernel)
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    block(torch.randn(8, DIM), torch.randn(8, 3, DIM))
    assert timer.calls == 0 and calls[0] == 1


def measured_once_more(block: CrossModalBlock, timer: FakeTimer) -> bool:
    """Whether a call of the block in a new process (no verdicts in memory) measures again."""
    native.forget_verdicts()
    before = timer.calls
    block(torch.randn(8, DIM), torch.randn(8, 3, DIM))
    return timer.calls > before


def calibrated_block(monkeypatch: pytest.MonkeyPatch, cache: Path) -> tuple[CrossModalBlock, FakeTimer]:
    """A block with its kernel under auto, verdicts cached in ``cache`` and timed by a FakeTimer."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    timer = FakeTimer(0.5, 1.0)
    monkeypatch.setattr(native, "measure", timer)
    native.configure("auto")
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    return block, timer


def test_verdicts_are_cached_by_cpu_and_kernel_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    block, timer = calibrated_block(monkeypatch, tmp_path / "cache")
    assert measured_once_more(block, timer)
    assert not measured_once_more(block, timer), "the cached verdict is used"
    block(torch.randn(200, DIM), torch.randn(200, 3, DIM))
    assert timer.calls == 1, "the process's first verdict of a site serves its other sizes"
    native.forget_verdicts()
    block(torch.randn(200, DIM), torch.randn(200, 3, DIM))
    assert timer.calls == 2, "a new process whose first call is of another size class measures it"

    monkeypatch.setattr(native, "_cpu_identity", lambda: "model name : another CPU\nflags : sse2")
    native._load.cache_clear()
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    assert measured_once_more(block, timer), "another CPU"

    sources = tmp_path / "kernels"
    shutil.copytree(native.KERNEL_DIR, sources)
    with (sources / "cross_block.c").open("a") as source:
        source.write("/* an edit */\n")
    monkeypatch.setattr(native, "KERNEL_DIR", sources)
    native._load.cache_clear()
    block.kernel = CrossBlockKernel(DIM, 3, HEADS, FFN)
    assert measured_once_more(block, timer), "other kernel sources"
    assert not measured_once_more(block, timer)


@pytest.mark.parametrize("damage", ["", "{not json", '{"kernel_seconds": "x"}', '{"torch_seconds": 1.0}'])
def test_a_damaged_verdict_is_measured_again(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, damage: str) -> None:
    block, timer = calibrated_block(monkeypatch, tmp_path)
    assert measured_once_more(block, timer)
    (saved,) = (tmp_path / "vlif_pipeline" / "kernels" / "verdicts").iterdir()
    saved.write_text(damage)
    assert measured_once_more(block, timer)
    assert native._read_verdict(saved) == timer.verdict, "written again"


def timed_call(order: list[str], name: str, seconds: float) -> Callable[[], None]:
    def call() -> None:
        order.append(name)
        time.sleep(seconds)

    return call


def test_measure_times_both_paths_alternately() -> None:
    order: list[str] = []
    verdict = native.measure(timed_call(order, "k", 0.02), timed_call(order, "t", 0.02))
    assert order == ["k", "t", "k", "t", "t", "k"], "a near-tie is timed twice each way"
    assert verdict.kernel_seconds >= 0.005 and verdict.torch_seconds >= 0.005


def test_a_clear_winner_is_timed_once() -> None:
    order: list[str] = []
    verdict = native.measure(timed_call(order, "k", 0.002), timed_call(order, "t", 0.05))
    assert order == ["k", "t", "k", "t"]
    assert verdict.use_kernel


@pytest.mark.parametrize(("kernel", "name"), [(CrossBlockKernel, "cross_block"), (RedundancyKernel, "redundancy")])
def test_the_python_parameter_table_matches_the_c_enum(kernel: type[native._Kernel], name: str) -> None:
    """The pointers go to C in PARAMS order: a mismatch with the enum would feed it wrong tensors."""
    text = (native.KERNEL_DIR / f"{name}.c").read_text()
    body = re.search(r"enum Param \{(.*?)\};", text, re.S)
    assert body is not None, f"{name}.c has no enum Param"
    entries = [entry.split("=")[0].strip() for entry in body.group(1).replace("\n", " ").split(",")]
    grads = entries.index("N_GRAD")
    assert tuple(entries[:grads]) == kernel.PARAMS
    assert entries[grads + 1 : entries.index("N_PARAM")] == [p[:-2] for p in kernel.PARAMS if p.endswith("_T")]
