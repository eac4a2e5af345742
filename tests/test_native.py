"""The fused CPU kernels (models/native.py, models/kernels/*.c) against the PyTorch modules they replace."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from test_vlif import batch, tiny_data
from vlif_pipeline.models import native
from vlif_pipeline.models.fusion import CrossModalBlock, RedundancyEncoder
from vlif_pipeline.models.native import CrossBlockKernel, NativeUnavailable, RedundancyKernel
from vlif_pipeline.models.vlif import VLIF

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler (cc) to build the kernels")

DIM, HEADS, FFN = 64, 4, 64


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
def test_cross_block_kernel_equals_the_module(n: int, n_tokens: int) -> None:
    """Values and every gradient, for node counts that do and do not fill the 16-node tiles."""
    block = CrossModalBlock(DIM, HEADS, FFN, 0.01)
    randomise(block)
    query = torch.randn(n, DIM, requires_grad=True)
    tokens = torch.randn(n, n_tokens, DIM, requires_grad=True)
    expected = gradients(block, [query, tokens], lambda: block(query, tokens))
    block.kernel = CrossBlockKernel(DIM, n_tokens, HEADS, FFN)
    assert_same(gradients(block, [query, tokens], lambda: block(query, tokens)), expected)


@pytest.mark.parametrize("n", [37, 16, 1])
def test_redundancy_kernel_equals_the_module(n: int) -> None:
    encoder = RedundancyEncoder(DIM, HEADS, FFN, 0.01)
    randomise(encoder)
    v, t = torch.randn(n, DIM, requires_grad=True), torch.randn(n, DIM, requires_grad=True)
    expected = gradients(encoder, [v, t], lambda: encoder.encode(v, t))
    encoder.kernel = RedundancyKernel(DIM, HEADS, FFN)
    assert_same(gradients(encoder, [v, t], lambda: encoder.encode(v, t)), expected)


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
    data = tiny_data()
    shape = {"embedding_dim": DIM, "n_heads": HEADS, "ffn_dim": FFN, "mlp_hidden": 32, "layer_scale": 0.5}
    models = []
    for setting in (True, False):
        torch.manual_seed(0)
        models.append(VLIF(data, {**shape, **params, "native": setting}))
    return models[0], models[1]


@pytest.mark.parametrize("restrict", [True, False])
def test_vlif_with_kernels_equals_vlif_without(restrict: bool) -> None:
    fused, plain = vlif_pair(restrict=restrict)
    assert fused.redundancy.kernel is not None and plain.redundancy.kernel is None
    users, pos, neg = batch(size=16)
    out_f, out_p = fused.loss(users, pos, neg), plain.loss(users, pos, neg)
    for key in out_p:
        torch.testing.assert_close(out_f[key], out_p[key])
    out_f["loss"].backward()
    out_p["loss"].backward()
    for (name, p_f), p_p in zip(fused.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p_f.grad, p_p.grad, rtol=1e-4, atol=1e-6, msg=name)
    with torch.no_grad():
        torch.testing.assert_close(fused.score_users(users), plain.score_users(users))


def test_unavailable_kernels_fail_when_required_and_fall_back_with_a_warning(monkeypatch) -> None:
    monkeypatch.setenv("CC", "no-such-compiler")
    native.load.cache_clear()
    try:
        with pytest.raises(ValueError, match="native is true.*no C compiler 'no-such-compiler'"):
            vlif_pair()
        model = VLIF(tiny_data(), {"embedding_dim": DIM, "native": "auto"})
        assert model.redundancy.kernel is None
        assert [level for level, _ in model.notes] == [logging.WARNING]
        assert "using PyTorch ops (slower)" in model.notes[0][1]
    finally:
        native.load.cache_clear()


def test_kernels_are_built_once_into_the_cache(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    native.load.cache_clear()
    try:
        kernel = RedundancyKernel(DIM, HEADS, FFN)
        assert kernel.path.parent == tmp_path / "vlif_pipeline" / "kernels"
        built = kernel.path.stat().st_mtime_ns
        native.load.cache_clear()
        assert RedundancyKernel(DIM, HEADS, FFN).path.stat().st_mtime_ns == built, "rebuilt"
        assert [p.name for p in kernel.path.parent.iterdir()] == [kernel.path.name], "leftover build files"
    finally:
        native.load.cache_clear()


def test_unsupported_shapes_are_refused() -> None:
    with pytest.raises(NativeUnavailable, match="multiples of 64"):
        CrossBlockKernel(48, 3, 4, 64)


def test_a_failed_build_names_the_compiler_error(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(native, "KERNEL_DIR", tmp_path)
    (tmp_path / "broken.c").write_text("this is not C\n")
    native.load.cache_clear()
    try:
        with pytest.raises(NativeUnavailable, match=r"compiling broken\.c failed"):
            native.load("broken", ())
    finally:
        native.load.cache_clear()


def test_an_unwritable_cache_is_reported(monkeypatch, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))  # a file, so no folder can be made under it
    native.load.cache_clear()
    try:
        with pytest.raises(NativeUnavailable, match="cannot build into"):
            RedundancyKernel(DIM, HEADS, FFN)
    finally:
        native.load.cache_clear()
