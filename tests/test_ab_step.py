"""benchmarks/ab_step.py: the base revision is imported apart from the working tree and both train alike."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_script():
    spec = importlib.util.spec_from_file_location("ab_step", ROOT / "benchmarks" / "ab_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_same_revision_gives_equal_losses(capsys: pytest.CaptureFixture[str]) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the script compares against a git revision")
    script = _load_script()
    assert script.main(["--base", "HEAD", "--steps", "5", "--batch-size", "128", "--scale", "0.05"]) == 0
    out = capsys.readouterr().out
    assert "5 steps each" in out
    assert "largest loss difference: 0.00e+00" in out  # HEAD's models are deterministic on a CPU
    assert script.BASE_PACKAGE not in {name.split(".")[0] for name in sys.modules}, "the base copy's modules linger"


def test_the_base_builds_its_own_models_and_shares_the_kernel_caches() -> None:
    """The registry names model modules by string: the base must import its own copies of them (else
    the comparison is the tree against itself), yet read the tree's cached kernel verdicts (else each
    side decides from its own timings, and the same revision trains differently)."""
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True).returncode != 0:
        pytest.skip("not a git checkout: the script compares against a git revision")
    script = _load_script()
    from vlif_pipeline.models import model_class, native

    with script.revision_models("HEAD") as base:
        assert base.model_class("vlif").__module__ == f"{script.BASE_PACKAGE}.models.vlif"
        assert model_class("vlif").__module__ == "vlif_pipeline.models.vlif"
        base_native = sys.modules[f"{script.BASE_PACKAGE}.models.native"]
        assert base_native.cache_dir() == native.cache_dir()
