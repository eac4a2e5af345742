"""Sentence encoding throughput: the stage's cached encoder against plain SentenceTransformer.encode.

Same texts (synthetic product texts of mixed length, 20 to ~2,000 characters), same model, same
batch size, in one process, interleaved ``--repeats`` times (best time kept):
- plain: ``model.encode(texts, batch_size, normalize_embeddings=True)`` on a model loaded beforehand;
- ours, cold: ``embed_texts`` with an empty cache (includes hashing the model folder, loading the
  model and writing the cache shards);
- ours, warm: the same call again, every text now cached.

    PYTHONPATH=src python benchmarks/bench_encode.py --n 2000 --out bench_encode.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vlif_pipeline.text.encode import embed_texts, load_model, resolve_model_folder  # noqa: E402

WORDS = ("soft cotton baby blanket stroller car seat bottle warmer organic bib swaddle crib sheet toddler "
         "toy rattle teether monitor diaper bag pacifier clip wipes bath tub waterproof machine washable "
         "easy to clean BPA free lightweight adjustable strap for newborns and infants").split()


def product_texts(n: int, seed: int) -> list[str]:
    """n distinct texts with log-normal lengths (median ~200 characters, tail to ~2,000)."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(mean=np.log(35), sigma=0.9, size=n), 3, 350).astype(int)
    return [f"item {j}: " + " ".join(rng.choice(WORDS, size=length)) for j, length in enumerate(lengths)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the best time is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    texts = product_texts(args.n, args.seed)
    logger = logging.getLogger("bench-encode")
    model = load_model(resolve_model_folder(args.model), args.device)
    model.encode(texts[:64], batch_size=args.batch_size)  # warm-up: first-call allocations
    plain_s, cold_s, warm_s = [], [], []
    for _ in range(args.repeats):  # interleaved, so a load change on the machine hits both alike
        started = time.perf_counter()
        plain = model.encode(texts, batch_size=args.batch_size, normalize_embeddings=True, convert_to_numpy=True)
        plain_s.append(time.perf_counter() - started)
        with tempfile.TemporaryDirectory() as cache:
            started = time.perf_counter()
            ours = embed_texts(texts, args.model, cache, args.batch_size, args.device, logger)
            cold_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            embed_texts(texts, args.model, cache, args.batch_size, args.device, logger)
            warm_s.append(time.perf_counter() - started)
    plain_s, cold_s, warm_s = min(plain_s), min(cold_s), min(warm_s)
    rows = [("plain SentenceTransformer.encode", plain_s), ("ours, cold cache (end to end)", cold_s),
            ("ours, warm cache (end to end)", warm_s)]
    chars = np.array([len(t) for t in texts])
    print(f"{args.n} texts, characters median {int(np.median(chars))}, max {chars.max()}, "
          f"model {args.model}, batch {args.batch_size}, device {args.device}")
    print(f"{'method':>34} {'seconds':>8} {'texts/s':>9}")
    for name, seconds in rows:
        print(f"{name:>34} {seconds:>8.2f} {args.n / seconds:>9.1f}")
    print(f"max |ours - plain| = {np.abs(ours - plain).max():.2e}")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "median_chars": int(np.median(chars)),
                                              "results": {name: {"seconds": s, "texts_per_s": args.n / s}
                                                          for name, s in rows},
                                              "max_abs_diff": float(np.abs(ours - plain).max())}, indent=2))


if __name__ == "__main__":
    main()
