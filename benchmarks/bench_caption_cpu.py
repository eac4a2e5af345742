"""CPU captioning speed of the tiny local Qwen2.5-VL on demo-like items (issue 7, item 7).

Builds the tiny model and N items with 64x64 PNG images (10% without an image, captioned from the
title), fetches them with the images stage, then times the whole ``caption`` stage as a fresh
process (interpreter start, imports, model load, captioning, output) with an empty cache, once per
batch size. Usage:

    flock /tmp/vlif-bench.lock python benchmarks/bench_caption_cpu.py --items 800 --max-new-tokens 32 \\
        --batch-sizes 8 32 64 --out bench_caption_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"


def stage(args: list[str], log: Path | None = None) -> float:
    """Run one pipeline stage in a fresh interpreter; return its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "vlif_pipeline", *args, *(["--log", str(log)] if log else [])]
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def make_items(root: Path, n: int, size: int) -> None:
    """Items with random-texture PNGs (every 10th without an image) and short product titles."""
    rng = np.random.default_rng(0)
    (root / "raw" / "images").mkdir(parents=True)
    urls = []
    for i in range(n):
        if i % 10 == 0:
            urls.append(None)
            continue
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "raw" / f"images/{i}.png")
        urls.append(f"images/{i}.png")
    titles = [f"Soft cotton baby blanket model {i}, blue" for i in range(n)]
    pl.DataFrame({"i": list(range(n)), "item_id": [f"B{i:09d}" for i in range(n)], "title": titles,
                  "image_url": urls}).write_parquet(root / "items.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=800)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 32, 64])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompt", default="title_cot")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_caption_cpu.") as tmp:
        root = Path(tmp)
        make_items(root, args.items, args.image_size)
        build_s = stage(["build-tiny-vlm", "--out-dir", str(root / "model"), "--seed", "0"])
        stage(["images", "--items", str(root / "items.parquet"), "--base-dir", str(root / "raw"), "--cache-dir",
               str(root / "imgcache"), "--out", str(root / "manifest.parquet")])
        for batch in args.batch_sizes:
            log = root / f"caption_b{batch}.log"
            wall = stage(["caption", "--manifest", str(root / "manifest.parquet"), "--items",
                          str(root / "items.parquet"), "--model", str(root / "model"), "--prompt", args.prompt,
                          "--shard", "0", "--n-shards", "1", "--cache-dir", str(root / f"cache_b{batch}"),
                          "--out", str(root / f"captions_b{batch}.parquet"), "--batch-size", str(batch),
                          "--max-new-tokens", str(args.max_new_tokens), "--threads", str(args.threads)], log)
            rates = re.findall(r"captions: \d+ / \d+ \(([\d.]+) items/s\)", log.read_text())
            rows.append({"batch": batch, "stage_wall_s": round(wall, 2),
                         "items_per_s_stage": round(args.items / wall, 1),
                         "items_per_s_generation": float(rates[-1]) if rates else None})
            print(rows[-1], flush=True)
    print(f"\ntiny model build: {build_s:.1f} s; {args.items} items, {args.image_size}px, "
          f"max_new_tokens {args.max_new_tokens}, threads {args.threads}, cpus {os.cpu_count()}")
    print(f"{'batch':>5} {'stage wall s':>12} {'items/s (stage)':>16} {'items/s (generation)':>21}")
    for row in rows:
        print(f"{row['batch']:>5} {row['stage_wall_s']:>12} {row['items_per_s_stage']:>16} "
              f"{row['items_per_s_generation']!s:>21}")
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "build_s": build_s,
                                        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
