"""Peak memory of the caption stage: demo-sized images against 16 images of 9000 x 9000 pixels.

Both cases run the stage's own command line (``python -m vlif_pipeline caption``) with the tiny
locally built Qwen2.5-VL on the CPU, one after the other, and report each child process's peak
RSS. Very large product photos are allowed (under the images stage's 89.5-Mpx guard); the caption
stage must not hold them at full size.

    python benchmarks/bench_caption_memory.py --work /tmp/capmem     # about 2 minutes
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def make_images(folder: Path, count: int, side: int, fmt: str) -> list[Path]:
    """``count`` distinct images of ``side`` x ``side``: a gradient with a numbered stamp."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    base = Image.linear_gradient("L").resize((side, side)).convert("RGB")
    for k in range(count):
        path = folder / f"img{k}.{fmt}"
        if not path.exists():
            image = base.copy()
            ImageDraw.Draw(image).rectangle([k * 7, k * 11, k * 7 + side // 9, k * 11 + side // 9], fill=(k * 15, 90, 200))
            image.save(path, compress_level=1) if fmt == "png" else image.save(path, quality=90)
        paths.append(path)
    return paths


def write_inputs(folder: Path, paths: list[Path]) -> tuple[Path, Path]:
    """The manifest and items tables the caption stage reads."""
    sizes = [Image.open(p).size for p in paths]
    manifest = pa.table({
        "i": list(range(len(paths))),
        "url": [str(p) for p in paths],
        "path": [str(p) for p in paths],
        "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
        "status": ["ok"] * len(paths),
        "http_status": pa.array([None] * len(paths), pa.int32()),
        "width": pa.array([w for w, _ in sizes], pa.int32()),
        "height": pa.array([h for _, h in sizes], pa.int32()),
    })
    items = pa.table({"i": list(range(len(paths))), "title": [f"product {k}" for k in range(len(paths))]})
    pq.write_table(manifest, folder / "manifest.parquet")
    pq.write_table(items, folder / "items.parquet")
    return folder / "manifest.parquet", folder / "items.parquet"


def run_case(name: str, work: Path, model: Path, paths: list[Path], batch_size: int) -> dict[str, float]:
    case = work / name
    manifest, items = write_inputs(case, paths)
    shutil.rmtree(case / "cache", ignore_errors=True)  # every caption generated, none from an earlier run
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "vlif_pipeline", "caption", "--manifest", str(manifest), "--items", str(items),
         "--model", str(model), "--prompt", "title_cot", "--shard", "0", "--n-shards", "1",
         "--cache-dir", str(case / "cache"), "--out", str(case / "captions.parquet"), "--batch-size",
         str(batch_size), "--max-new-tokens", "8", "--device", "cpu", "--log", str(case / "caption.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak RSS (KiB on Linux)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{name}: the caption stage failed; see {case / 'caption.log'}")
    return {"images": len(paths), "seconds": time.perf_counter() - started, "peak_rss_gib": usage.ru_maxrss / 2**20}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("results/bench-caption-memory"))
    parser.add_argument("--side", type=int, default=9000)
    parser.add_argument("--batch-size", type=int, default=64, help="the demo's vlm.batch_size")
    args = parser.parse_args()
    model = args.work / "tiny-model"
    if not model.exists():
        subprocess.run([sys.executable, "-m", "vlif_pipeline", "build-tiny-vlm", "--out-dir", str(model), "--seed", "0"],
                       check=True)
    small = make_images(args.work / "small", 800, 64, "png")
    huge = make_images(args.work / "huge", 16, args.side, "png")
    rows = {
        "demo-sized (800 x 64 px)": run_case("small", args.work, model, small, args.batch_size),
        f"16 x {args.side} px": run_case("huge", args.work, model, huge, args.batch_size),
    }
    print(f"{'case':28} {'images':>6} {'seconds':>8} {'peak RSS GiB':>13}")
    for name, row in rows.items():
        print(f"{name:28} {row['images']:>6} {row['seconds']:>8.1f} {row['peak_rss_gib']:>13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
