"""CPU kernels in C (``kernels/*.c``), compiled on first use with the system's C compiler.

Why: on a CPU, a transformer block of the fusion is ~25 small PyTorch ops per direction, each a
pass over (n, T, d) tensors in memory; the block kernels run each tile of nodes through the whole
block in cache. PyTorch's CSR product is ~3x slower than a plain row loop on these graphs
(docs/model.md, Speed). Kernels are built for this machine (``-march=native``), the block's shapes
as constants, and cached under ``$XDG_CACHE_HOME/vlif_pipeline/kernels`` (``~/.cache`` by default)
keyed by the sources, the flags, the compiler and the CPU, so a cluster's shared home directory
never hands one node's binary to a different CPU.

One process-wide mode (:func:`configure`, the trainer's ``native`` setting) decides: ``auto`` uses
a kernel only where it builds and is measured faster than PyTorch's ops on this CPU at the call's
shape (:func:`kernel_wins`), and otherwise PyTorch's ops; ``true`` always uses the kernels and makes
a failed build an error; ``false`` never uses them. :func:`take_notes` returns what was chosen, for
the log, and :func:`provenance` what ran, for a run's metrics.

Why measure: the same C code that halves a VLIF step on one CPU was 9x slower than PyTorch on
another (docs/benchmarks.md); a verdict is measured once per CPU, build and shape and cached.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, TypeVar

import torch

from vlif_pipeline.registry import PARAM_CHOICES

if TYPE_CHECKING:
    from vlif_pipeline.models.fusion import CrossModalBlock, RedundancyEncoder

KERNEL_DIR = Path(__file__).with_name("kernels")
# -ffast-math lets the compiler vectorise reductions, expf and erff (glibc's vector maths); NaN and
# infinity keep their meaning, so a diverging run still shows a NaN loss. Linking happens in a
# separate step without it: a shared object linked with -ffast-math would set flush-to-zero for
# the whole process when loaded (crtfastmath.o, GCC 12).
COMPILE_FLAGS = ("-O3", "-ffast-math", "-fno-finite-math-only", "-fopenmp", "-fPIC")
LINK_FLAGS = ("-shared", "-fopenmp")


MODES = PARAM_CHOICES["native"]
K = TypeVar("K")
_mode: str | bool = "auto"
_notes: list[tuple[int, str]] = []  # (logging level, message) of each build and verdict, until taken


class NativeUnavailable(RuntimeError):
    """A kernel cannot be built or loaded here; the message says why."""


def configure(mode: str | bool) -> None:
    """Set the mode for this process: ``auto``, true or false (see the module's docstring)."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"native must be 'auto', true or false, got {mode!r}")
    _mode = mode
    _used.clear()
    _verdicts.clear()  # each run (the trainer configures once) decides from its own first calls
    spmm_kernel.cache_clear()
    info_nce_kernel.cache_clear()


def build(factory: Callable[[], K]) -> K | None:
    """``factory()``'s kernel under the current mode: None when off, or unavailable under ``auto``."""
    if _mode is False:
        return None
    try:
        kernel = factory()
    except NativeUnavailable as err:
        if _mode is True:
            raise
        _notes.append((logging.WARNING, f"{err}; using PyTorch's ops instead (slower)"))
        return None
    _notes.append((logging.INFO, f"built the CPU kernel {kernel.path}"))  # type: ignore[attr-defined]
    return kernel


def take_notes() -> list[tuple[int, str]]:
    """(logging level, message) of each kernel built or refused since the last call; a reason that
    refused several kernels (no compiler) once."""
    taken = list(dict.fromkeys(_notes))
    _notes.clear()
    return taken


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vlif_pipeline" / "kernels"


def march() -> str:
    """The ISA level the kernels are built for: ``$VLIF_KERNEL_MARCH``, default ``native`` (this CPU).

    A named level such as ``x86-64-v3`` (AVX2 + FMA) lets an AVX-512 machine build and measure
    the kernels another CPU would run.
    """
    return os.environ.get("VLIF_KERNEL_MARCH", "native")


def cpu_model() -> str:
    """The CPU's model name, for logs and provenance."""
    for line in _cpu_identity().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_identity() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.split(":")[0].strip() in ("model name", "flags")]
    return "\n".join(dict.fromkeys(wanted)) or platform.machine()


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise NativeUnavailable(f"{what} failed ({' '.join(command)}):\n{done.stderr.strip()[-2000:]}")


def load(name: str, defines: tuple[tuple[str, int], ...]) -> tuple[Path, ctypes.CDLL]:
    """The kernel library ``kernels/<name>.c`` built with ``-D<key>=<value>`` for each of ``defines``,
    for the ISA level :func:`march`.

    Returns the library's path and its handle.
    """
    return _load(name, defines, march())


@functools.cache
def _load(name: str, defines: tuple[tuple[str, int], ...], level: str) -> tuple[Path, ctypes.CDLL]:
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise NativeUnavailable(f"no C compiler {compiler!r} on PATH (set CC to another one)")
    source = KERNEL_DIR / f"{name}.c"
    flags = [*COMPILE_FLAGS, f"-march={level}", *(f"-D{key}={value}" for key, value in defines)]
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    sources = [path.read_text() for path in sorted(KERNEL_DIR.iterdir()) if path.suffix in (".c", ".h")]
    key = hashlib.sha256("\0".join([*sources, *flags, *LINK_FLAGS, version, _cpu_identity()]).encode())
    target = cache_dir() / f"{name}-{key.hexdigest()[:20]}.so"
    if target.exists():
        try:
            return target, ctypes.CDLL(str(target))
        except OSError:
            target.unlink(missing_ok=True)  # a damaged cache file: build it again
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            obj, lib = Path(tmp) / f"{name}.o", Path(tmp) / f"{name}.so"
            _run([compiler, *flags, "-c", str(source), "-o", str(obj)], f"compiling {source.name}")
            _run([compiler, *LINK_FLAGS, str(obj), "-o", str(lib), "-lm"], f"linking {source.name}")
            with lib.open("rb") as built:
                os.fsync(built.fileno())  # complete on disk before it gets the name later runs trust
            os.replace(lib, target)  # atomic: concurrent builds of the same key write the same file
    except OSError as err:
        raise NativeUnavailable(f"cannot build into {target.parent}: {err}") from err
    try:
        return target, ctypes.CDLL(str(target))
    except OSError as err:
        raise NativeUnavailable(f"cannot load {target}: {err}") from err


def _pointers(tensors: list[torch.Tensor]) -> ctypes.Array[ctypes.c_void_p]:
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() for t in tensors))


def _cpu_float32(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _first_order_only() -> None:
    """The kernels' backwards are not themselves differentiable: refuse ``create_graph`` (under which
    autograd runs a backward with gradients enabled) rather than return wrong higher-order gradients."""
    if torch.is_grad_enabled():
        raise RuntimeError("the CPU kernels have no second derivatives: configure native false for create_graph")


def _check_status(status: int, what: str) -> None:
    if status:
        raise MemoryError(f"the {what} kernel could not allocate its per-thread buffers")


CALIBRATION_CALLS = 2  # timed calls per path at most, after one untimed call each; the fastest counts
CLEAR_RATIO = 1.5  # a path this much faster after one timed call each is chosen without a second


@dataclass(frozen=True)
class Verdict:
    """Median seconds per call of a kernel and of the PyTorch ops it replaces, at one shape."""

    kernel_seconds: float
    torch_seconds: float

    @property
    def use_kernel(self) -> bool:
        return self.kernel_seconds < self.torch_seconds


# this process's verdicts, by library, call site and threads: (verdict, where it came from, sizes)
_verdicts: dict[tuple[str, str, int], tuple[Verdict, str, tuple[int, ...]]] = {}
_used: dict[str, dict[str, object]] = {}  # what ran, by kernel call site, for provenance()
_calibration = [0.0]  # seconds this process spent in measure()


def size_class(n: int) -> int:
    """n rounded up to a power of two: a cached verdict serves later runs whose sizes are within 2x."""
    return 1 << max(0, n - 1).bit_length()


def measure(kernel_run: Callable[[], object], torch_run: Callable[[], object]) -> Verdict:
    """Time both paths: one untimed call each (lazy allocations), then up to :data:`CALIBRATION_CALLS`
    calls each, alternating which goes first so that drift on a shared machine hits both alike;
    the fastest call of each counts (interruptions only ever add time). A clear winner after the
    first round (:data:`CLEAR_RATIO`) ends it: the PyTorch side of a Baby-sized VLIF run's fused
    blocks is most of the calibration's cost, and a second call would not change its verdict."""
    began = time.perf_counter()
    kernel_run()
    torch_run()
    times: dict[Callable[[], object], list[float]] = {kernel_run: [], torch_run: []}
    for k in range(CALIBRATION_CALLS):
        for run in (kernel_run, torch_run) if k % 2 == 0 else (torch_run, kernel_run):
            started = time.perf_counter()
            run()
            times[run].append(time.perf_counter() - started)
        fast, slow = sorted((min(times[kernel_run]), min(times[torch_run])))
        if slow >= CLEAR_RATIO * fast:
            break
    _calibration[0] += time.perf_counter() - began
    return Verdict(min(times[kernel_run]), min(times[torch_run]))


def _verdict_path(library: Path, site: str, shape: tuple[int, ...], threads: int) -> Path:
    """Where a verdict is cached: keyed by the library (its name hashes the kernel sources, flags,
    ISA level, compiler and CPU), the call site and shape, the thread count and PyTorch's build and
    ISA level (the other side of the comparison)."""
    key = json.dumps(
        [library.name, site, shape, threads, torch.__version__, torch.backends.cpu.get_cpu_capability()]
    )
    return cache_dir() / "verdicts" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _read_verdict(path: Path) -> Verdict | None:
    """The cached verdict, or None when there is none or it is damaged (then it is measured again)."""
    try:
        saved = json.loads(path.read_text())
        verdict = Verdict(float(saved["kernel_seconds"]), float(saved["torch_seconds"]))
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return verdict if verdict.kernel_seconds >= 0 and verdict.torch_seconds >= 0 else None


def _write_verdict(path: Path, verdict: Verdict, site: str, shape: tuple[int, ...]) -> None:
    record = {**asdict(verdict), "site": site, "shape": shape, "cpu": cpu_model(), "march": march()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as tmp:
            tmp.write(json.dumps(record, indent=2) + "\n")
        os.replace(tmp.name, path)
    except OSError as err:  # a read-only cache costs a measurement per process, nothing else
        _notes.append((logging.WARNING, f"cannot cache the kernel verdict in {path.parent}: {err}"))


def forget_verdicts() -> None:
    """Drop this process's verdicts (not the cached ones): the next call of each site looks again."""
    _verdicts.clear()


def kernel_wins(
    library: Path, site: str, shape: tuple[int, ...], kernel_run: Callable[[], object], torch_run: Callable[[], object]
) -> bool:
    """Whether a kernel call at ``site`` (e.g. ``cross_block forward+backward``) with sizes ``shape``
    should run the kernel: always under ``true``; under ``auto`` when measured faster than PyTorch.

    The first call of a site in a run (since :func:`configure`, which the trainer calls once) decides
    for the run's later calls (they differ in size by less than 2x, and each measurement costs a
    few steps), so that a run's paths depend on its own shapes alone: its
    verdict comes from the cache for its sizes, else from :func:`measure` of ``kernel_run`` and
    ``torch_run`` (which run the call both ways), and is noted for the log.
    """
    if _mode is True:
        _used.setdefault(site, {"path": "kernel", "chosen_by": "native: true"})
        return True
    threads = torch.get_num_threads()
    key = (str(library), site, threads)
    if key not in _verdicts:
        path = _verdict_path(library, site, shape, threads)
        verdict, origin = _read_verdict(path), "cached"
        if verdict is None:
            verdict, origin = measure(kernel_run, torch_run), "measured"
            _write_verdict(path, verdict, site, shape)
        _verdicts[key] = (verdict, origin, shape)
        choice = "the kernel" if verdict.use_kernel else "PyTorch's ops"
        _notes.append(
            (
                logging.INFO,
                f"{site} at sizes {shape}, {threads} threads: kernel {verdict.kernel_seconds * 1e3:.2f} ms, "
                f"PyTorch {verdict.torch_seconds * 1e3:.2f} ms per call ({origin}): using {choice}",
            )
        )
    verdict, origin, decided_at = _verdicts[key]
    if site not in _used:  # since the last configure(): what this run's provenance reports
        _used[site] = {
            "path": "kernel" if verdict.use_kernel else "pytorch",
            "chosen_by": f"{origin} (native: auto)",
            "sizes": list(decided_at),
            "kernel_ms": round(verdict.kernel_seconds * 1e3, 3),
            "pytorch_ms": round(verdict.torch_seconds * 1e3, 3),
        }
    return verdict.use_kernel


def _timed_call(
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    backward: bool,
) -> Callable[[], None]:
    """A call of ``fn(*inputs)`` as training makes it, for :func:`measure`: with ``backward``, also
    the gradients of its outputs' sum to the inputs and ``params``, on detached copies of the inputs
    and without touching any ``.grad``."""

    def run() -> None:
        with torch.set_grad_enabled(backward):
            copies = [x.detach().requires_grad_(backward) for x in inputs]
            out = fn(*copies)
            if backward:
                outs = out if isinstance(out, tuple) else (out,)
                total = torch.stack([o.sum() for o in outs]).sum()
                torch.autograd.grad(total, [*copies, *params], allow_unused=True)

    return run


class _Library:
    """A built kernel library ``kernels/<name>.c``, and the choice between it and PyTorch's ops."""

    def __init__(self, name: str, defines: dict[str, int]) -> None:
        self.name = name
        self.path, self.lib = load(name, tuple(defines.items()))

    def wins(
        self,
        kernel_fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
        torch_fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
        inputs: Sequence[torch.Tensor],
        params: Sequence[torch.Tensor] = (),
        sizes: tuple[int, ...] | None = None,
        backward: bool | None = None,
    ) -> bool:
        """Whether ``kernel_fn(*inputs)`` should run rather than ``torch_fn(*inputs)`` (:func:`kernel_wins`).

        Timed as training uses them: forward and backward (to the inputs and ``params``) when
        ``backward``, by default when gradients are enabled. ``sizes`` default: the inputs' first
        dimension, rounded by :func:`size_class`.
        """
        backward = torch.is_grad_enabled() if backward is None else backward
        site = f"{self.name} {'forward+backward' if backward else 'forward'}"
        shape = sizes if sizes is not None else (size_class(inputs[0].shape[0]),)
        return kernel_wins(
            self.path,
            site,
            shape,
            _timed_call(kernel_fn, inputs, params, backward),
            _timed_call(torch_fn, inputs, params, backward),
        )


def provenance() -> dict[str, object]:
    """What ran in this process: the CPU, the mode, the kernels' ISA level and, per kernel call site,
    whether the kernel or PyTorch's ops ran, and why."""
    return {
        "cpu": cpu_model(),
        "native": _mode,
        "march": march(),
        "calibration_seconds": round(_calibration[0], 3),
        "paths": {k: dict(v) for k, v in _used.items()},
    }


class SpmmKernel(_Library):
    """``kernels/spmm.c``: A x for a CSR matrix A (int64 indices) and a dense float32 x, without autograd."""

    def __init__(self) -> None:
        super().__init__("spmm", {})

    def __call__(self, adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous()
        crow, col, values = (t.contiguous() for t in (adj.crow_indices(), adj.col_indices(), adj.values()))
        out = x.new_empty((adj.shape[0], x.shape[1]))
        self.lib.spmm(
            ctypes.c_long(adj.shape[0]),
            ctypes.c_long(x.shape[1]),
            torch.get_num_threads(),
            *(ctypes.c_void_p(t.data_ptr()) for t in (crow, col, values, x, out)),
        )
        return out


@functools.cache
def spmm_kernel() -> SpmmKernel | None:
    """The CSR product kernel under the current mode (built once per mode)."""
    return build(SpmmKernel)


def sparse_mm(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A x (N, d) for sparse CSR ``adj`` (N, M) and dense ``x`` (M, d), by the kernel where it applies.

    It applies to float32 CPU tensors with int64 indices outside autograd (callers' autograd
    functions call this in their forward and backward); anything else goes to ``torch.sparse.mm``.
    """
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and x.dim() == 2
        and adj.shape[1] == x.shape[0]  # else torch.sparse.mm says what is wrong
        and adj.layout == torch.sparse_csr
        and adj.dim() == 2
        and adj.values().dim() == 1  # no hybrid CSR with dense blocks per entry
        and adj.values().dtype == torch.float32
        and adj.crow_indices().dtype == adj.col_indices().dtype == torch.int64
        and not (x.requires_grad and torch.is_grad_enabled())
    ):
        kernel = spmm_kernel()
        if kernel is not None:
            sizes = (size_class(adj.shape[0]), size_class(adj.values().numel()), x.shape[1])
            if kernel.wins(lambda y: kernel(adj, y), lambda y: torch.sparse.mm(adj, y), [x], sizes=sizes, backward=False):
                return kernel(adj, x)
    return torch.sparse.mm(adj, x)


class InfoNceKernel(_Library):
    """``kernels/infonce.c``: row and column sums of the InfoNCE exponentials, for width d."""

    def __init__(self, dim: int) -> None:
        if dim % 64:
            raise NativeUnavailable(f"the InfoNCE kernel needs embedding_dim a multiple of 64 (got {dim})")
        self.dim = dim
        super().__init__("infonce", {"D": dim})

    def accepts(self, a: torch.Tensor, b: torch.Tensor) -> bool:
        """Whether a and b are what the kernel was built for: float32 CPU tensors (n, d) of one shape."""
        return _cpu_float32(a, b) and a.dim() == 2 and a.shape[1] == self.dim and a.shape == b.shape

    def __call__(
        self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """r = S w (n,) and c = w^T S (n,) for S = exp((a b^T - 1) / temperature), a and b (n, d); differentiable
        in a and b (not in the weights w (n,))."""
        return _ExpSums.apply(self, a, b, weight, 1.0 / temperature)


def _padded(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with zero rows appended up to ``rows``; x itself when it has them and is contiguous."""
    if x.shape[0] == rows and x.is_contiguous():
        return x
    out = x.new_zeros((rows, *x.shape[1:]))
    out[: x.shape[0]] = x
    return out


class _ExpSums(torch.autograd.Function):
    """Autograd wrapper of :class:`InfoNceKernel`; rows padded to a multiple of 4, columns of 64."""

    @staticmethod
    def forward(ctx, kernel: InfoNceKernel, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor, alpha: float):  # type: ignore[override]
        n = a.shape[0]
        n4, n64 = -(-n // 4) * 4, -(-n // 64) * 64
        threads = torch.get_num_threads()
        a_pad, b_pad, w_pad = _padded(a.detach(), n4), _padded(b.detach(), n64), _padded(weight.detach(), n64)
        panels = torch.empty_like(b_pad)  # the kernel's scratch: b^T, rearranged
        exps, row_sums, col_parts = a.new_empty((n4, n64)), a.new_empty(n4), a.new_zeros((threads, n64))
        kernel.lib.info_nce_forward(
            ctypes.c_long(n4),
            ctypes.c_long(n64),
            threads,
            *(ctypes.c_void_p(t.data_ptr()) for t in (a_pad, b_pad, panels, w_pad)),
            ctypes.c_float(alpha),
            *(ctypes.c_void_p(t.data_ptr()) for t in (exps, row_sums, col_parts)),
        )
        ctx.kernel, ctx.alpha, ctx.n, ctx.spent = kernel, alpha, n, False
        ctx.save_for_backward(exps, a_pad, b_pad, w_pad)
        return row_sums[:n], col_parts.sum(0)[:n]

    @staticmethod
    def backward(ctx, grad_rows: torch.Tensor, grad_cols: torch.Tensor):  # type: ignore[override]
        _first_order_only()
        if ctx.spent:
            raise RuntimeError("the InfoNCE kernel's backward overwrites its saved exponentials: it runs once")
        ctx.spent = True
        exps, a_pad, b_pad, w_pad = ctx.saved_tensors
        grad_a, grad_b = torch.empty_like(a_pad), torch.empty_like(b_pad)
        # named, not temporaries: a tensor must outlive the call that gets its address
        grad_rows, grad_cols = _padded(grad_rows, a_pad.shape[0]), _padded(grad_cols, b_pad.shape[0])
        status = ctx.kernel.lib.info_nce_backward(
            ctypes.c_long(a_pad.shape[0]),
            ctypes.c_long(b_pad.shape[0]),
            torch.get_num_threads(),
            *(ctypes.c_void_p(t.data_ptr()) for t in (exps, grad_rows, grad_cols, w_pad)),
            ctypes.c_float(ctx.alpha),
            *(ctypes.c_void_p(t.data_ptr()) for t in (a_pad, b_pad, grad_a, grad_b)),
        )
        _check_status(status, ctx.kernel.name)
        return None, grad_a[: ctx.n], grad_b[: ctx.n], None, None


@functools.cache
def info_nce_kernel(dim: int) -> InfoNceKernel | None:
    """The InfoNCE kernel for width ``dim`` under the current mode (built once per mode)."""
    return build(lambda: InfoNceKernel(dim))


class _Kernel(_Library):
    """One built kernel ``kernels/<name>.c``: ``<name>_forward``, ``<name>_backward``, ``<name>_grad_size``.

    The C side takes its inputs and its parameters as arrays of pointers. ``PARAMS`` names the
    parameters in the order of the C file's ``enum Param`` (up to ``N_GRAD``; a test holds the two
    together); a name ending in ``_T`` is a weight the kernel takes transposed, as (in, out), and
    which is also passed again untransposed after the others, in the same order (the enum's
    entries after ``N_GRAD``).
    """

    PARAMS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str, defines: dict[str, int]) -> None:
        super().__init__(name, defines)
        self.transposed = tuple(k for k, param in enumerate(self.PARAMS) if param.endswith("_T"))
        getattr(self.lib, f"{name}_grad_size").restype = ctypes.c_long
        self.grad_size = int(getattr(self.lib, f"{name}_grad_size")())

    def apply(self, inputs: list[torch.Tensor], params: list[torch.Tensor], out_shape: tuple[int, ...]) -> torch.Tensor:
        """The kernel's output for ``inputs`` (each with the node count n first) and ``params``.

        Differentiable with respect to all of them.
        """
        return _Fused.apply(self, len(inputs), out_shape, *inputs, *params)


class _Fused(torch.autograd.Function):
    """Autograd wrapper around a :class:`_Kernel`: its C forward, and its C backward for all inputs."""

    @staticmethod
    def forward(ctx, kernel: _Kernel, n_inputs: int, out_shape: tuple[int, ...], *tensors: torch.Tensor):  # type: ignore[override]
        inputs = [t.contiguous() for t in tensors[:n_inputs]]
        params = tensors[n_inputs:]
        ordered = [p.T.contiguous() if k in kernel.transposed else p.contiguous() for k, p in enumerate(params)]
        ordered += [params[k].contiguous() for k in kernel.transposed]
        out = inputs[0].new_empty(out_shape)
        status = getattr(kernel.lib, f"{kernel.name}_forward")(
            ctypes.c_long(inputs[0].shape[0]),
            torch.get_num_threads(),
            _pointers(inputs),
            _pointers(ordered),
            ctypes.c_void_p(out.data_ptr()),
        )
        _check_status(status, kernel.name)
        ctx.kernel, ctx.n_inputs, ctx.n_params = kernel, n_inputs, len(params)
        ctx.save_for_backward(*inputs, *ordered)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        _first_order_only()
        kernel: _Kernel = ctx.kernel
        saved = ctx.saved_tensors
        inputs, ordered = list(saved[: ctx.n_inputs]), list(saved[ctx.n_inputs :])
        grad_out = grad_out.contiguous()  # named: it must outlive the call that gets its address
        grad_inputs = [torch.empty_like(t) for t in inputs]
        threads = torch.get_num_threads()
        grads = inputs[0].new_zeros(threads, kernel.grad_size)
        status = getattr(kernel.lib, f"{kernel.name}_backward")(
            ctypes.c_long(inputs[0].shape[0]),
            threads,
            _pointers(inputs),
            _pointers(ordered),
            ctypes.c_void_p(grad_out.data_ptr()),
            _pointers(grad_inputs),
            ctypes.c_void_p(grads.data_ptr()),
        )
        _check_status(status, kernel.name)
        flat = grads.sum(0)  # the threads' partial sums, in a fixed order
        grad_params = []
        for k, p in enumerate(ordered[: ctx.n_params]):
            g, flat = flat[: p.numel()].view(p.shape), flat[p.numel() :]
            grad_params.append(g.T if k in kernel.transposed else g)
        return None, None, None, *grad_inputs, *grad_params


def _check_shape(dim: int, n_heads: int, ffn_dim: int) -> None:
    if dim % 64 or ffn_dim % 64 or dim % n_heads:
        raise NativeUnavailable(
            f"the fused kernels need embedding_dim and ffn_dim multiples of 64 (got {dim}, {ffn_dim})"
        )


def _block_params(block: CrossModalBlock | RedundancyEncoder) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """A block's key/value weights and biases, and its finish (output layer and feed-forward, LayerScale
    gains folded in), in the kernels' order."""
    d = block.out.weight.shape[0]
    weight, bias = block.key_value.weight, block.key_value.bias
    inner, _, outer = block.ffn
    key_value = [weight[:d], bias[:d], weight[d:], bias[d:]]
    finish = [
        block.out.weight * block.gain_attn[:, None],
        block.out.bias * block.gain_attn,
        block.norm_ffn.weight,
        block.norm_ffn.bias,
        inner.weight,
        inner.bias,
        outer.weight * block.gain_ffn[:, None],
        outer.bias * block.gain_ffn,
    ]
    return key_value, finish


class CrossBlockKernel(_Kernel):
    """``kernels/cross_block.c``: :class:`CrossModalBlock` for d, T tokens, heads, feed-forward width."""

    PARAMS = (
        "LN_G", "LN_B", "WQ_T", "BQ", "WK_T", "BK", "WV_T", "BV", "WO_T", "BO", "LN2_G", "LN2_B", "W1_T", "B1",
        "W2_T", "B2",
    )

    def __init__(self, dim: int, n_tokens: int, n_heads: int, ffn_dim: int) -> None:
        _check_shape(dim, n_heads, ffn_dim)
        super().__init__("cross_block", {"D": dim, "T": n_tokens, "H": n_heads, "F": ffn_dim})
        self.dim, self.n_tokens = dim, n_tokens

    def accepts(self, query: torch.Tensor, tokens: torch.Tensor) -> bool:
        """Whether query (n, d) and tokens (n, T, d) are float32 CPU tensors of the built shape."""
        n = query.shape[0]
        shapes = query.shape == (n, self.dim) and tokens.shape == (n, self.n_tokens, self.dim)
        return _cpu_float32(query, tokens) and shapes

    def __call__(self, block: CrossModalBlock, query: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The block's output (n, d) for query (n, d) and tokens (n, T, d)."""
        key_value, finish = _block_params(block)
        norm, project = block.norm_attn, block.query
        params = [norm.weight, norm.bias, project.weight, project.bias, *key_value, *finish]
        return self.apply([query, tokens], params, tuple(query.shape))


class RedundancyKernel(_Kernel):
    """``kernels/redundancy.c``: :meth:`RedundancyEncoder.encode` after its node-independent part."""

    PARAMS = (
        "LN_G", "LN_B", "WK_T", "BK", "WV_T", "BV", "Q", "FIXED_SCORES", "FIXED_VALUES", "WO_T", "BO", "LN2_G",
        "LN2_B", "W1_T", "B1", "W2_T", "B2",
    )

    def __init__(self, dim: int, n_heads: int, ffn_dim: int) -> None:
        _check_shape(dim, n_heads, ffn_dim)
        super().__init__("redundancy", {"D": dim, "H": n_heads, "F": ffn_dim})
        self.dim = dim

    def accepts(self, v: torch.Tensor, t: torch.Tensor) -> bool:
        """Whether v and t are float32 CPU tensors (n, d) of the built width."""
        return _cpu_float32(v, t) and v.shape == t.shape and v.dim() == 2 and v.shape[1] == self.dim

    def __call__(
        self,
        encoder: RedundancyEncoder,
        real: torch.Tensor,
        query: torch.Tensor,
        fixed_scores: torch.Tensor,
        fixed_values: torch.Tensor,
    ) -> torch.Tensor:
        """F's CLS outputs (3, n, d) from the real tokens (n, 2, d) with modality embeddings added, CLS's
        query (d,), and the scaled scores (3, H) and values (3, d) of CLS, MASK_v and MASK_t."""
        key_value, (out_weight, out_bias, *ffn) = _block_params(encoder)
        norm = encoder.norm_attn
        params = [norm.weight, norm.bias, *key_value, query, fixed_scores, fixed_values, out_weight]
        params += [out_bias + encoder.cls[0], *ffn]  # CLS is the residual stream of every node
        return self.apply([real], params, (3, real.shape[0], real.shape[2]))
