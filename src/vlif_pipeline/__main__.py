"""One entry point for every stage: ``python -m vlif_pipeline <stage> [args]``.

Rules call this and nothing else, so a stage's code lives in exactly one module, imported lazily
(importing torch for a parquet-only stage would cost seconds per job).
"""

from __future__ import annotations

import importlib
import os
import sys

STAGES: dict[str, tuple[str, str]] = {
    "demo": ("vlif_pipeline.amazon.demo", "generate the synthetic demo dataset in the raw 2014 format"),
    "download": ("vlif_pipeline.amazon.download", "fetch a raw file from a URL with retries and a checksum"),
    "ingest": ("vlif_pipeline.amazon.ingest", "parse raw reviews + meta into interactions/items parquet"),
    "kcore": ("vlif_pipeline.data.kcore", "k-core filter, remap ids, per-user split"),
    "mmrec-import": ("vlif_pipeline.data.mmrec", "an MMRec dataset as the k-core stage's files, ids and split kept"),
    "mmrec-export": ("vlif_pipeline.data.mmrec", "export a dataset to MMRec's layout"),
    "mmrec-features": ("vlif_pipeline.data.mmrec", "take an MMRec folder's feature file as is"),
    "original-features": ("vlif_pipeline.data.image_features", "stream 2014 CNN features into a .npy"),
    "images": ("vlif_pipeline.vision.images", "fetch product images into the cache, write the manifest"),
    "build-tiny-vlm": ("vlif_pipeline.vision.tiny_model", "build a tiny random Qwen2.5-VL locally"),
    "caption": ("vlif_pipeline.vision.captioner", "caption one shard of images with a Qwen-VL model"),
    "caption-gather": ("vlif_pipeline.vision.gather", "gather caption shards into one parquet"),
    "encode-text": ("vlif_pipeline.text.encode", "sentence embeddings of item texts or captions"),
    "graph-user-item": ("vlif_pipeline.graphs.user_item", "normalised user-item adjacency"),
    "graph-item-knn": ("vlif_pipeline.graphs.item_knn", "exact blocked item-item cosine kNN graph"),
    "graph-user-user": ("vlif_pipeline.graphs.user_user", "user-user co-interaction top-k graph"),
    "train": ("vlif_pipeline.training.run", "train and evaluate one model configuration"),
    "recommend": ("vlif_pipeline.training.recommend", "a trained run's top-k items per user, or for one user"),
    "report": ("vlif_pipeline.report.cli", "metrics.json, table.md and ablation.md"),
}

ENTRY_POINTS = {"mmrec-import": "import_main", "mmrec-features": "features_main"}
"""Stages whose module serves several stages name their other functions here (default: `main`)."""


def main(argv: list[str] | None = None) -> int:
    """Dispatch to ``<module>.main(rest_of_argv)``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in STAGES:
        width = max(map(len, STAGES))
        lines = [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in STAGES.items()]
        print("usage: python -m vlif_pipeline <stage> [args]\n\nstages:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    if not sys.stderr.isatty():  # a rule's log file: plain lines, no carriage-return progress bars
        os.environ.setdefault("TQDM_DISABLE", "1")
    module = importlib.import_module(STAGES[argv[0]][0])
    entry = getattr(module, ENTRY_POINTS.get(argv[0], "main"))
    return int(entry(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
