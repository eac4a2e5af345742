"""The prepared device check of the caption stage (benchmarks/check_caption_stage.py) runs here on CPU.

Why: a GPU session has one call to run it; it must not fail there for a reason a CPU run can show.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "check_caption_stage.py"


def test_device_check_passes_on_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("check_caption_stage", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "report.json"
    assert module.main(["--device", "cpu", "--items", "12", "--batch-size", "4", "--max-new-tokens", "8",
                        "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert all(report["checks"].values()) and len(report["checks"]) == 4
    assert report["runs"]["hf"]["statuses"] == {"ok": 10, "text_only": 1, "image_error": 1}
