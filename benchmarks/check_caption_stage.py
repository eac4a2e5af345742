"""End-to-end check of the caption stage on one device, with the tiny local model and real files.

What the GPU machine must confirm for issue 7 and the CPU tests cannot: that the stage itself (model
loading, input building, both engines in bf16) runs under that machine's torch and transformers,
that a rerun resumes from the cache without generating again, and that a real CUDA out-of-memory
error halves the batch instead of failing items. Each step is one run of the stage's own CLI
entry point on files written here: images of several sizes, an item without an image and a corrupt
image file, so every status the stage can give appears.

    python3 benchmarks/check_caption_stage.py --device cuda    # writes $OUT/check_caption_stage.json
    python benchmarks/check_caption_stage.py --device cpu      # the same steps here, except the OOM one

Needs torch, transformers, pyarrow and Pillow (no polars, snakemake or qwen-vl-utils). Exits 1 when
a check fails; the JSON lists every check with what was measured.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlif_pipeline.vision import captioner  # noqa: E402
from vlif_pipeline.vision.tiny_model import build  # noqa: E402

COLOURS = [(214, 39, 40), (31, 119, 180), (44, 160, 44), (255, 127, 14), (148, 103, 189)]
SIZES = [(64, 64), (224, 224), (320, 200), (448, 448), (512, 384)]


def write_inputs(root: Path, n_items: int) -> tuple[Path, Path]:
    """Manifest and items parquet files for ``n_items`` items: images of five sizes, then one item
    without an image (status missing_url) and one whose cached file is not an image."""
    images = root / "images"
    images.mkdir(parents=True)
    rows: list[dict[str, Any]] = []
    for i in range(n_items):
        path = images / f"{i}.png"
        if i == n_items - 1:
            path.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
            rows.append({"i": i, "path": str(path), "status": "ok", "width": 64, "height": 64})
            continue
        if i == n_items - 2:
            rows.append({"i": i, "path": None, "status": "missing_url", "width": None, "height": None})
            continue
        width, height = SIZES[i % len(SIZES)]
        img = Image.new("RGB", (width, height), (240, 240, 240))
        ImageDraw.Draw(img).ellipse([width // 4, height // 4, 3 * width // 4, 3 * height // 4],
                                    fill=COLOURS[i % len(COLOURS)])
        img.save(path)
        rows.append({"i": i, "path": str(path), "status": "ok", "width": width, "height": height})
    for row in rows:
        row["sha256"] = hashlib.sha256(Path(row["path"]).read_bytes()).hexdigest() if row["path"] else None
    manifest = root / "manifest.parquet"
    pq.write_table(pa.Table.from_pylist([{k: r[k] for k in captioner.MANIFEST_COLUMNS} for r in rows]), manifest)
    items = root / "items.parquet"
    titles = [f"Round {['red', 'blue', 'green', 'orange', 'purple'][i % 5]} ceramic mug no. {i}" for i in range(n_items)]
    pq.write_table(pa.table({"i": list(range(n_items)), "title": titles}), items)
    return manifest, items


def settled_memory() -> int:
    """Bytes allocated on the GPU once unreachable objects are collected and the cache is emptied."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def run_stage(root: Path, name: str, model: Path, manifest: Path, items: Path, cache: Path,
              device: str, engine: str, batch_size: int, max_new_tokens: int) -> dict[str, Any]:
    """One run of the caption stage's CLI; returns its wall time, exit code, statuses and captions."""
    out, log = root / f"{name}.parquet", root / f"{name}.log"
    argv = ["--manifest", str(manifest), "--items", str(items), "--model", str(model), "--prompt", "title_cot",
            "--shard", "0", "--n-shards", "1", "--cache-dir", str(cache), "--out", str(out),
            "--batch-size", str(batch_size), "--max-new-tokens", str(max_new_tokens), "--device", device,
            "--engine", engine, "--threads", "2", "--max-failed-fraction", "0.5", "--log", str(log)]
    if device == "cuda":
        baseline = settled_memory()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    code = captioner.main(argv)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {"exit_code": code, "seconds": round(seconds, 3), "log": log.read_text()}
    if device == "cuda":
        # relative to what was allocated before the run: earlier runs' leftovers must not count
        result["peak_bytes"] = torch.cuda.max_memory_allocated() - baseline
        result["retained_bytes"] = settled_memory() - baseline
    if out.exists():
        table = pq.read_table(out).to_pylist()
        result["statuses"] = {s: sum(r["status"] == s for r in table) for s in {r["status"] for r in table}}
        result["captions"] = [r["caption"] for r in table]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--out", help="JSON path (default $OUT/check_caption_stage.json when OUT is set)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="check-caption-") as tmp:
        report = check(args, Path(tmp))
    out = args.out or (os.path.join(os.environ["OUT"], "check_caption_stage.json") if os.environ.get("OUT") else None)
    if out:
        Path(out).write_text(json.dumps(report, indent=2))
    return 0 if all(report["checks"].values()) else 1


def check(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    """Every step and check in the scratch folder ``root``; returns the report."""
    model = root / "model"
    build(model, seed=0)
    manifest, items = write_inputs(root / "inputs", args.items)
    common = {"model": model, "manifest": manifest, "items": items, "device": args.device,
              "max_new_tokens": args.max_new_tokens}
    runs = {
        "hf": run_stage(root, "hf", cache=root / "cache_hf", engine="hf", batch_size=args.batch_size, **common),
        "fast": run_stage(root, "fast", cache=root / "cache_fast", engine="fast", batch_size=args.batch_size,
                          **common),
    }
    runs["fast_rerun"] = run_stage(root, "fast_rerun", cache=root / "cache_fast", engine="fast",
                                   batch_size=args.batch_size, **common)
    expected = {"ok": args.items - 2, "text_only": 1, "image_error": 1}
    checks = {
        "hf: exit 0 and every status as expected": runs["hf"]["exit_code"] == 0
        and runs["hf"].get("statuses") == expected,
        "fast: exit 0 and every status as expected": runs["fast"]["exit_code"] == 0
        and runs["fast"].get("statuses") == expected,
        f"on {args.device} the model ran in {'bfloat16' if args.device == 'cuda' else 'float32'}":
            ("bfloat16" if args.device == "cuda" else "float32") in runs["fast"]["log"],
        # failures are not cached (they may be transient), so only the corrupt file is tried again
        "rerun: all but the corrupt image from the cache, same captions":
            f"{args.items - 1} cached, 1 distinct prompts to caption" in runs["fast_rerun"]["log"]
        and runs["fast_rerun"].get("captions") == runs["fast"].get("captions"),
    }
    same = sum(a == b for a, b in zip(runs["hf"].get("captions", []), runs["fast"].get("captions", [])))
    report: dict[str, Any] = {"device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
                              "torch": torch.__version__, "captions_equal_hf_fast": f"{same}/{args.items}"}
    if args.device == "cuda":
        # peaks measured after the first fast run, which also allocates one-off per-process buffers
        # (cuBLAS keeps a workspace per stream it has run on)
        runs["small_batch"] = run_stage(root, "small_batch", cache=root / "cache_small", engine="fast",
                                        batch_size=2, **common)
        runs["full_batch"] = run_stage(root, "full_batch", cache=root / "cache_full", engine="fast",
                                       batch_size=args.batch_size, **common)
        small, big = runs["small_batch"]["peak_bytes"], runs["full_batch"]["peak_bytes"]
        # a cap between the peaks of batch 2 and of the full batch: the full batch must hit a real OOM
        limit = settled_memory() + (small + big) / 2
        torch.cuda.set_per_process_memory_fraction(limit / torch.cuda.get_device_properties(0).total_memory)
        runs["oom"] = run_stage(root, "oom", cache=root / "cache_oom", engine="fast", batch_size=args.batch_size,
                                **common)
        torch.cuda.set_per_process_memory_fraction(1.0)
        report["oom_cap_bytes"] = {"batch_2_peak": small, "full_batch_peak": big, "cap": int(limit)}
        checks["OOM: the batch was halved and every status is as expected"] = (
            "CUDA out of memory at batch" in runs["oom"]["log"] and runs["oom"].get("statuses") == expected
        )
        retained = {name: run["retained_bytes"] for name, run in runs.items()}
        report["retained_bytes"] = retained
        checks["GPU memory: after the first fast run, a finished run keeps under 1 MiB allocated"] = all(
            retained[name] < 1 << 20 for name in ("fast_rerun", "small_batch", "full_batch", "oom")
        )
    report["checks"] = checks
    report["runs"] = {name: {k: v for k, v in run.items() if k != "captions"} for name, run in runs.items()}
    for name, run in runs.items():
        print(f"{name:12s} exit {run['exit_code']}  {run['seconds']:7.2f} s  {run.get('statuses')}")
    print(f"captions equal between hf and fast: {report['captions_equal_hf_fast']}")
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    return report


if __name__ == "__main__":
    raise SystemExit(main())
