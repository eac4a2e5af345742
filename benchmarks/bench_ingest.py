"""Benchmark: ingest + k-core + split on a synthetic 2014-format dump with realistic skew.

Generates (untimed) a gzip reviews file of N reviews whose users and items follow power laws
(a few heavy users and items, a long tail; duplicates and a few bad lines included) and a meta
file of Python-literal lines, then times the ``ingest`` and ``kcore`` stages as child processes
and reports each one's wall time and peak RSS (``os.wait4`` rusage of that child).

    flock /tmp/vlif-bench.lock python benchmarks/bench_ingest.py --n-reviews 10000000 --out bench.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl

WORDS = np.array(
    "soft warm great small large blue red sturdy cheap quality baby gift love fits broke returned "
    "perfect daughter son easy clean wash size color material plastic cotton wood metal works".split()
)
GEN_CHUNK = 1_000_000


def _power_law_sample(rng: np.random.Generator, n_values: int, size: int, exponent: float) -> np.ndarray:
    """Draw ``size`` ids in 0..n_values-1 with P(rank k) proportional to k^-exponent, ids shuffled."""
    weights = np.arange(1, n_values + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    ranks = np.searchsorted(cdf, rng.random(size) * cdf[-1])
    return rng.permutation(n_values)[ranks]


def _texts(rng: np.random.Generator, n: int, mean_words: int) -> list[str]:
    lengths = rng.poisson(mean_words, n) + 1
    words = WORDS[rng.integers(0, WORDS.size, int(lengths.sum()))]
    ends = np.cumsum(lengths)
    return [" ".join(words[e - k : e]) for e, k in zip(ends, lengths)]


def generate(folder: Path, n_reviews: int, n_users: int, n_items: int, bad_lines: int, seed: int) -> dict[str, int]:
    """Write reviews.json.gz and meta.json.gz; returns their sizes."""
    rng = np.random.default_rng(seed)
    pool = _texts(rng, 2000, 25)
    texts = pl.Series(pool)
    bad_at = set(rng.choice(n_reviews, bad_lines, replace=False).tolist())
    # zlib releases the GIL: one writer thread compresses a chunk while the next one is built.
    with gzip.open(folder / "reviews.json.gz", "wb", compresslevel=1) as out, ThreadPoolExecutor(1) as writer:
        pending: Future[int] | None = None
        for start in range(0, n_reviews, GEN_CHUNK):
            n = min(GEN_CHUNK, n_reviews - start)
            users = pl.Series(_power_law_sample(rng, n_users, n, 0.6)).cast(pl.String).str.pad_start(12, "0")
            items = pl.Series(_power_law_sample(rng, n_items, n, 0.7)).cast(pl.String).str.pad_start(9, "0")
            chunk = pl.DataFrame(
                {
                    "reviewerID": "A" + users,
                    "asin": "B" + items,
                    "reviewerName": texts.gather(rng.integers(0, 2000, n)).str.slice(0, 12),
                    "helpful": pl.Series([[0, 0]]).new_from_index(0, n),
                    "reviewText": texts.gather(rng.integers(0, 2000, n)),
                    "overall": rng.integers(1, 6, n).astype(np.float64),
                    "summary": texts.gather(rng.integers(0, 2000, n)).str.slice(0, 30),
                    "unixReviewTime": rng.integers(1_000_000_000, 1_400_000_000, n),
                    "reviewTime": pl.repeat("01 1, 2014", n, eager=True),
                }
            )
            lines = chunk.write_ndjson().encode().split(b"\n")
            for k in sorted(b for b in bad_at if start <= b < start + n):
                lines[k - start] = b'{"reviewerID": "broken'
            if pending is not None:
                pending.result()
            pending = writer.submit(out.write, b"\n".join(lines))
        if pending is not None:
            pending.result()
    with gzip.open(folder / "meta.json.gz", "wt", compresslevel=1) as out:
        for k in range(n_items):
            asin = f"B{k:09d}"
            record = {
                "asin": asin,
                "title": pool[k % 2000][:60].title(),
                "price": round(float(rng.random() * 100), 2),
                "imUrl": f"http://ecx.images-amazon.com/images/I/{asin}._SY300_.jpg",
                "related": {"also_bought": [f"B{j:09d}" for j in rng.integers(0, n_items, 15)],
                            "also_viewed": [f"B{j:09d}" for j in rng.integers(0, n_items, 10)]},
                "salesRank": {"Baby": int(rng.integers(1, 10**6))},
                "categories": [["Baby", "Nursery"], ["Baby", "Feeding", "Bottles"]],
                "description": pool[(k * 7) % 2000] + ("" if k % 3 else " It's \"great\"."),
            }
            if k % 10 == 0:
                del record["title"]
            out.write(repr(record) + "\n")
    return {name: (folder / name).stat().st_size for name in ("reviews.json.gz", "meta.json.gz")}


def _timed(command: list[str]) -> dict[str, float]:
    """Run one stage as a child; its wall time and peak RSS (from wait4, this child only)."""
    start = time.perf_counter()
    child = subprocess.Popen(command)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"stage failed: {' '.join(command)}")
    return {"wall_s": round(wall, 2), "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-reviews", type=int, default=10_000_000)
    parser.add_argument("--n-users", type=int, help="default: n_reviews / 4")
    parser.add_argument("--n-items", type=int, help="default: n_reviews / 20")
    parser.add_argument("--bad-lines", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the dump here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="reuse a dump already in --workdir")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    n_users = args.n_users or args.n_reviews // 4
    n_items = args.n_items or args.n_reviews // 20

    with tempfile.TemporaryDirectory(prefix="bench_ingest_") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if args.reuse and (folder / "reviews.json.gz").is_file() and (folder / "meta.json.gz").is_file():
            sizes = {name: (folder / name).stat().st_size for name in ("reviews.json.gz", "meta.json.gz")}
        else:
            start = time.perf_counter()
            sizes = generate(folder, args.n_reviews, n_users, n_items, args.bad_lines, args.seed)
            print(f"generated {args.n_reviews} reviews in {time.perf_counter() - start:.0f} s: {sizes}", flush=True)
        stage = [sys.executable, "-m", "vlif_pipeline"]
        load_before = os.getloadavg()[0]
        print(f"load average before timing: {load_before:.1f}", flush=True)
        results = {
            "ingest": _timed(stage + [
                "ingest", "--format", "amazon2014", "--reviews", str(folder / "reviews.json.gz"),
                "--meta", str(folder / "meta.json.gz"), "--out-interactions", str(folder / "interactions.parquet"),
                "--out-items", str(folder / "items.parquet"), "--report", str(folder / "report.json")]),
            "kcore": _timed(stage + [
                "kcore", "--interactions", str(folder / "interactions.parquet"), "--items",
                str(folder / "items.parquet"), "--k", "5", "--split", "random", "--seed", "42",
                "--missing-meta", "keep", "--out-dir", str(folder / "kcore")]),
        }
        report = json.loads((folder / "report.json").read_text())
        stats = json.loads((folder / "kcore" / "stats.json").read_text())

    total = sum(r["wall_s"] for r in results.values())
    peak = max(r["peak_rss_gib"] for r in results.values())
    print(f"\n{'stage':<8} {'wall s':>8} {'cpu s':>8} {'peak RSS GiB':>13}")
    for name, r in results.items():
        print(f"{name:<8} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} {r['peak_rss_gib']:>13.2f}")
    print(f"{'total':<8} {total:>8.1f} {'':>8} {peak:>13.2f}")
    print(f"ingest: {report['n_interactions']} interactions after {report['duplicates']['dropped']} duplicates, "
          f"{report['reviews']['bad_lines']} bad lines; 5-core: {stats['n_users']} users, {stats['n_items']} items, "
          f"{stats['n_interactions']} interactions")
    if args.out:
        args.out.write_text(json.dumps({
            "n_reviews": args.n_reviews, "n_users": n_users, "n_items": n_items, "sizes": sizes,
            "stages": results, "total_wall_s": round(total, 2), "peak_rss_gib": peak,
            "kcore_stats": stats, "load_average_before": load_before,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
