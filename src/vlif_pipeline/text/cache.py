"""Embedding cache keyed by (model identity, sha256 of the text), safe under concurrent writers.

Layout (docs/graphs.md)::

    <cache-dir>/<model-key>/model.json                   what the key was computed from
    <cache-dir>/<model-key>/shard-<time>-<uuid>.safetensors
        "sha256":    uint8 (n, 32)  digests of the UTF-8 texts
        "embedding": float32 (n, d) L2-normalised embeddings, row j of text j

Shards are append-only and each is written under a unique temporary name and renamed into place,
so two jobs writing at once never touch the same file and a reader never sees half a shard. There
is no shared index to lock: readers scan the shard digests. Nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from vlif_pipeline.io import atomic_path, write_json


def text_digest(text: str) -> bytes:
    """sha256 of the UTF-8 text: the per-text half of the cache key."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def folder_identity(folder: Path) -> str:
    """Content hash of a model folder (every file's relative path and bytes, hidden files skipped).

    Content, not the path: the same weights in two places share cache entries, and replaced
    weights at the same path do not.
    """
    outer = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if any(part.startswith(".") for part in relative.split("/")):
            continue
        inner = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{relative}\0{inner.hexdigest()}\n".encode())
    return outer.hexdigest()


class EmbeddingCache:
    """The shards of one model identity under ``cache_dir``."""

    def __init__(self, cache_dir: str | os.PathLike[str], identity: dict[str, str], logger: logging.Logger):
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = Path(cache_dir) / key
        self.folder.mkdir(parents=True, exist_ok=True)
        self.logger = logger
        if not (self.folder / "model.json").exists():
            write_json(self.folder / "model.json", identity)

    def lookup(self, digests: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """Cached embeddings (d,) float32 of the requested digests that are present in any shard.

        A shard that cannot be read (damaged outside this code) is logged and treated as absent.
        """
        wanted = set(digests)
        found: dict[bytes, np.ndarray] = {}
        for shard in sorted(self.folder.glob("shard-*.safetensors")):
            if len(found) == len(wanted):
                break
            try:
                tensors = load_file(shard)
                hashes, vectors = tensors["sha256"], tensors["embedding"]
            except (SafetensorError, KeyError, OSError) as err:
                self.logger.warning("ignoring unreadable cache shard %s (%s)", shard, err)
                continue
            if hashes.ndim != 2 or hashes.shape[1] != 32 or vectors.shape[0] != hashes.shape[0]:
                self.logger.warning("ignoring malformed cache shard %s", shard)
                continue
            for row, digest in enumerate(map(bytes, hashes)):
                if digest in wanted and digest not in found:
                    found[digest] = vectors[row]
        return found

    def add(self, digests: Sequence[bytes], embeddings: np.ndarray) -> Path:
        """Write one new shard atomically; ``embeddings`` is float32 (len(digests), d)."""
        hashes = np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), 32)
        name = f"shard-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex}.safetensors"
        final = self.folder / name
        with atomic_path(final) as tmp:
            save_file({"sha256": hashes, "embedding": np.ascontiguousarray(embeddings, dtype=np.float32)}, str(tmp))
        return final
