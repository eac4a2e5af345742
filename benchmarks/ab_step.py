"""Training-step time of the working tree against a git revision, interleaved in one process.

On a shared VM, back-to-back runs of the same code differ by 15-25% (this project's 2-core
machine, 2026-11-27: 0.44-0.60 s per VLIF step), more than most single optimisations gain. Here
both versions train the same model from the same seed on the same synthetic Baby-shaped batches,
one step each in alternating order (ABBA), so drift hits both alike; the median of the per-step
time ratios is the figure to quote. The losses are compared too: an exact rewrite keeps them
equal up to float rounding.

    flock /tmp/vlif-bench.lock python benchmarks/ab_step.py --base HEAD~1 --steps 60

The base revision's ``src/vlif_pipeline`` is extracted with ``git archive`` and imported under
another package name; both versions share the working tree's synthetic data and trainer step.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vlif_pipeline.models import build_model, native  # noqa: E402
from vlif_pipeline.training.sampler import TripleSampler  # noqa: E402
from vlif_pipeline.training.allocator import keep_freed_memory  # noqa: E402
from vlif_pipeline.training.step import eager_step, make_optimizer  # noqa: E402
from vlif_pipeline.training.synthetic import baby_shape, make_synthetic, to_train_data  # noqa: E402

BASE_PACKAGE = "vlif_ab_base"
# the package's name in imports and dotted module names (the registry's); elsewhere (the kernel
# cache's folder name) it stays, so that both versions read the same cached kernel verdicts
IMPORTED = re.compile(rb"\bvlif_pipeline(?=\.)|(?<=from )vlif_pipeline\b|(?<=import )vlif_pipeline\b")


@contextlib.contextmanager
def revision_models(revision: str) -> Iterator[ModuleType]:
    """The ``vlif_pipeline.models`` package of ``revision``, imported as ``vlif_ab_base.models`` from a
    temporary copy; on exit the copy and its modules are gone again."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src/vlif_pipeline"], check=True, capture_output=True
    ).stdout
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            target = Path(tmp) / BASE_PACKAGE / Path(member.name).relative_to("src/vlif_pipeline")
            target.parent.mkdir(parents=True, exist_ok=True)
            data = tar.extractfile(member).read()
            if target.suffix == ".py":  # module names only: it shares the tree's kernel caches
                data = IMPORTED.sub(BASE_PACKAGE.encode(), data)
            target.write_bytes(data)
        sys.path.insert(0, tmp)
        try:
            yield importlib.import_module(f"{BASE_PACKAGE}.models")
        finally:
            sys.path.remove(tmp)
            for name in [name for name in sys.modules if name.split(".")[0] == BASE_PACKAGE]:
                del sys.modules[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare the working tree with")
    parser.add_argument("--model", default="vlif")
    parser.add_argument("--steps", type=int, default=60, help="steps per version; the first 3 are not timed")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (0: default)")
    parser.add_argument("--scale", type=float, default=1.0, help="shrink the dataset (quick checks only)")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as training does (make_step): both versions run under it
    native.configure("auto")  # as a training run starts: kernel paths chosen for this run's shapes
    shape = baby_shape(args.scale)
    data = to_train_data(make_synthetic(**shape, seed=0), torch.device("cpu"))
    with revision_models(args.base) as base_models:
        versions = {}
        for name, build in (("base", base_models.build_model), ("tree", build_model)):
            torch.manual_seed(0)
            model = build(args.model, data, {})
            model.train()
            versions[name] = (model, make_optimizer(model, 1e-3))
        users, pos, neg = (torch.from_numpy(a) for a in TripleSampler(data.train, seed=0).epoch(1))
        steps = min(args.steps, users.numel() // args.batch_size)
        if steps < 4:
            parser.error(f"only {steps} full batches: need at least 4 (3 untimed)")
        times: dict[str, list[float]] = {"base": [], "tree": []}
        losses: dict[str, list[float]] = {"base": [], "tree": []}
        for step in range(steps):
            rows = slice(step * args.batch_size, (step + 1) * args.batch_size)
            for name in ("base", "tree") if step % 2 == 0 else ("tree", "base"):
                model, optimizer = versions[name]
                started = time.perf_counter()
                parts = eager_step(model, optimizer, users[rows], pos[rows], neg[rows])
                times[name].append(time.perf_counter() - started)
                losses[name].append(float(parts["loss"]))
    ratios = [tree / base for base, tree in zip(times["base"][3:], times["tree"][3:], strict=True)]
    loss_diff = max(abs(a - b) for a, b in zip(losses["base"], losses["tree"], strict=True))
    print(f"{args.model}, batch {args.batch_size}, {steps} steps each, base {args.base} vs working tree")
    base, tree = (statistics.median(times[name][3:]) for name in ("base", "tree"))
    print(f"median step: base {base:.3f} s, tree {tree:.3f} s")
    print(f"median per-step ratio tree/base: {statistics.median(ratios):.3f}")
    print(f"largest loss difference: {loss_diff:.2e} (last loss {losses['base'][-1]:.6f} vs {losses['tree'][-1]:.6f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
