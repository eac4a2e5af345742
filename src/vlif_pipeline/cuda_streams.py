"""The one side stream per GPU on which eager warm-up steps run before a CUDA-graph capture.

Why one, reused: cuBLAS keeps a workspace (33 MiB on an H200) for every stream it has run on and
never frees it. A fresh stream per captioning batch held 33 MiB more GPU memory per batch, measured
on the GPU machine (benchmarks/check_caption_stage.py, 2026-11-27); PyTorch hands out 32 streams
in turn, so that reached about 1 GiB.
"""

from __future__ import annotations

import functools

import torch


@functools.cache
def _stream(device_index: int) -> torch.cuda.Stream:
    return torch.cuda.Stream(device_index)


def warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """The warm-up side stream of CUDA ``device``, created on first use."""
    return _stream(torch.cuda.current_device() if device.index is None else device.index)
