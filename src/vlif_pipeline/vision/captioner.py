"""Caption one shard of product images with a Qwen2-VL / Qwen2.5-VL model (stage ``caption``).

Shard K of N holds the items with ``i % N == K``. Each item gets a prompt from ``prompts.py``: with
its image when the manifest has a usable one, otherwise per ``--no-image-policy`` (``text_only``:
the model describes the item from its title; ``empty``: a marked empty caption). Generation is
greedy, batched over prompts of similar length with left padding; bf16 + sdpa on CUDA, float32 on
CPU. ``--engine auto`` uses the project's CUDA-graph decoder (``fast_generate``) on CUDA and
transformers' ``generate`` on CPU.

Robustness: every finished batch is committed to the cache as one small parquet (atomic rename)
under a namespace keyed by (model identity incl. a digest of a local weights folder, prompt hash,
max_new_tokens); rows are keyed by the rendered prompt and the image's sha256. A killed run resumes
from the cache without redoing or duplicating anything, and other shards, datasets and reruns reuse
it. CUDA out-of-memory halves the batch (for the rest of the run too); an item whose image cannot be
decoded or whose generation fails gets a status instead of stopping the stage, under a tolerance.

Output statuses: ``ok`` (captioned from the image), ``text_only`` (from the title, no usable image),
``empty`` (no usable image and policy ``empty``, or no title either), ``image_error`` (the cached
image file cannot be decoded now), ``failed`` (generation raised for this item alone).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlif_pipeline.io import StageError, atomic_path, duration, require_row_ids, run_stage, setup_logging, write_json
from vlif_pipeline.registry import PROMPTS
from vlif_pipeline.vision.prompts import PromptSpec, chat_messages, get_prompt
from vlif_pipeline.vision.tiny_model import TINY_MARKER

CACHE_VERSION = 2  # 2: no checkpoint repetition penalty on the hf engine (captions of 1 may differ)
SMALL_FILE_BYTES = 64 * 2**20
DIGEST_SAMPLE_BYTES = 16 * 2**20
OUTPUT_SCHEMA = pa.schema(
    [("i", pa.int64()), ("caption", pa.string()), ("status", pa.string()), ("model", pa.string()),
     ("prompt_hash", pa.string())]
)
MANIFEST_COLUMNS = ("i", "path", "sha256", "status", "width", "height")
CHUNK_SCHEMA = pa.schema([("key", pa.string()), ("caption", pa.string()), ("status", pa.string())])


@dataclass(frozen=True)
class WorkItem:
    """One caption to produce; items sharing a ``key`` (same prompt and image) share the caption."""

    i: int
    key: str
    instruction: str
    image_path: str | None
    sort_length: int = 0
    pixels: int = 0  # of the image as the model sees it (after load_image's reduction)


@dataclass(frozen=True)
class Result:
    """A caption and its status (see the module docstring)."""

    caption: str
    status: str


# ---------------------------------------------------------------------------- model identity / cache


def _file_digest(path: Path) -> str:
    """Whole-file sha256 for small files; size + head + tail for large weight shards (fast, and
    still different for any two independently trained or initialised checkpoints)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        if size <= SMALL_FILE_BYTES:
            digest.update(fh.read())
        else:
            digest.update(fh.read(DIGEST_SAMPLE_BYTES))
            fh.seek(size - DIGEST_SAMPLE_BYTES)
            digest.update(fh.read(DIGEST_SAMPLE_BYTES))
    return digest.hexdigest()


def model_identity(model: str) -> str:
    """``<folder name>@<digest>`` for a local folder (content, not path), the hub id otherwise."""
    folder = Path(model)
    if not folder.is_dir():
        return model
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{path.relative_to(folder).as_posix()}:{_file_digest(path)}\n".encode())
    return f"{folder.resolve().name}@{digest.hexdigest()[:16]}"


class CaptionCache:
    """Append-only store of committed captions: one parquet per committed batch, atomically renamed."""

    def __init__(self, root: Path, identity: str, prompt_hash: str, max_new_tokens: int) -> None:
        key = json.dumps([CACHE_VERSION, identity, prompt_hash, max_new_tokens])
        self.dir = root / hashlib.sha256(key.encode()).hexdigest()[:20]
        self.dir.mkdir(parents=True, exist_ok=True)
        about = self.dir / "namespace.json"
        if not about.exists():
            write_json(about, {"cache_version": CACHE_VERSION, "model": identity, "prompt_hash": prompt_hash,
                               "max_new_tokens": max_new_tokens})

    def load(self) -> dict[str, Result]:
        """Every committed caption of this namespace (a chunk that cannot be read is reported)."""
        found: dict[str, Result] = {}
        for chunk in sorted(self.dir.glob("*.parquet")):
            try:
                table = pq.read_table(chunk, schema=CHUNK_SCHEMA)
            except (OSError, pa.ArrowException) as err:
                raise StageError(f"{chunk}: unreadable caption cache chunk ({err}); delete it to recompute") from None
            for key, caption, status in zip(*(table[c].to_pylist() for c in CHUNK_SCHEMA.names)):
                found[key] = Result(caption, status)
        return found

    def commit(self, results: dict[str, Result]) -> None:
        """Durably add one batch's captions (the file name is a digest of its keys: idempotent)."""
        keys = sorted(results)
        name = hashlib.sha256("\n".join(keys).encode()).hexdigest()[:24]
        table = pa.table(
            {"key": keys, "caption": [results[k].caption for k in keys], "status": [results[k].status for k in keys]},
            schema=CHUNK_SCHEMA,
        )
        with atomic_path(self.dir / f"{name}.parquet") as tmp:
            pq.write_table(table, tmp)


# ---------------------------------------------------------------------------- planning


def _read_columns(path: Path, columns: Sequence[str]) -> pa.Table:
    try:
        table = pq.read_table(path, columns=list(columns))
    except (OSError, pa.ArrowException) as err:
        raise StageError(f"{path}: cannot read columns {', '.join(columns)}: {err}") from None
    require_row_ids(path, table["i"].to_pylist())
    return table


def read_inputs(manifest_path: Path, items_path: Path) -> list[dict[str, Any]]:
    """One dict per item (manifest columns + title); both files must list items 0..I-1 in order.

    pyarrow rather than polars: this stage also runs on GPU machines that have no polars.
    """
    manifest = _read_columns(manifest_path, MANIFEST_COLUMNS)
    titles = _read_columns(items_path, ("i", "title"))
    if manifest.num_rows != titles.num_rows:
        raise StageError(f"{manifest_path} has {manifest.num_rows} items but {items_path} has {titles.num_rows}")
    rows = manifest.to_pylist()
    for row, title in zip(rows, titles["title"].to_pylist()):
        row["title"] = title
    return rows


def _key(kind: str, instruction: str, image_sha: str | None) -> str:
    return hashlib.sha256(json.dumps([kind, instruction, image_sha]).encode()).hexdigest()


def plan(
    items: list[dict[str, Any]], spec: PromptSpec, shard: int, n_shards: int, policy: str
) -> tuple[list[WorkItem], dict[int, Result]]:
    """Split the shard's items into work for the model and results fixed without it."""
    work: list[WorkItem] = []
    fixed: dict[int, Result] = {}
    for row in items[shard::n_shards]:  # items[i] is item i
        i, title = row["i"], row["title"]
        if row["status"] == "ok" and row["path"] is not None:
            instruction = spec.image_text(title)
            work.append(WorkItem(i, _key("image", instruction, row["sha256"]), instruction, row["path"]))
        elif policy == "text_only" and title is not None and title.strip():
            instruction = spec.text_only_text(title)
            work.append(WorkItem(i, _key("text", instruction, None), instruction, None))
        else:
            fixed[i] = Result("", "empty")
    return work, fixed


# ---------------------------------------------------------------------------- the model


class Captioner:
    """A loaded model + tokenizer + image processor that turns prompts and images into captions."""

    def __init__(
        self, model: str, device: str, engine: str, max_new_tokens: int, threads: int, logger: logging.Logger
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoTokenizer, GenerationConfig

        from vlif_pipeline.vision.qwen_inputs import load_image_processor

        self.torch = torch
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise StageError("--device cuda requested but CUDA is not available")
        self.device = device
        if device == "cpu":
            torch.set_num_threads(threads)
        self.dtype = torch.bfloat16 if device == "cuda" else torch.float32
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model)
            self.image_processor = load_image_processor(model)
            self.model = AutoModelForImageTextToText.from_pretrained(
                model, dtype=self.dtype, attn_implementation="sdpa"
            ).to(device).eval()
        except (OSError, ValueError) as err:
            raise StageError(f"cannot load model {model!r} (hub id or local folder): {err}") from None
        if self.tokenizer.chat_template is None:
            raise StageError(f"model {model!r}: its tokenizer has no chat template")
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        if self.eos_id is None or self.eos_id == self.tokenizer.unk_token_id:
            raise StageError(f"model {model!r}: its tokenizer has no <|im_end|> token (not a Qwen chat model)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token_id = self.eos_id
        self.pad_id = self.tokenizer.pad_token_id
        self.token_types = "mm_token_type_ids" in inspect.signature(self.model.forward).parameters
        self.max_new_tokens = max_new_tokens
        size = getattr(self.image_processor, "size", None) or {}
        self.max_pixels = int(size.get("longest_edge") or getattr(self.image_processor, "max_pixels", 0) or 12845056)
        # generate() fills every setting a caller leaves at its default from the checkpoint's
        # generation config, so a checkpoint's repetition penalty (Qwen2.5-VL ships 1.05) or sampling
        # would apply to the hf engine only; a fresh config leaves plain greedy decoding on both engines
        self.model.generation_config = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=self.eos_id, pad_token_id=self.pad_id
        )
        self.engine = self._choose_engine(engine, logger)
        logger.info("model %s on %s (%s), engine %s", model, device, self.dtype, self.engine)

    def _choose_engine(self, requested: str, logger: logging.Logger) -> str:
        """``auto``: the fast decoder on CUDA when it supports the architecture, else ``generate``."""
        if requested == "hf" or (requested == "auto" and self.device != "cuda"):
            return "hf"
        from vlif_pipeline.vision.fast_generate import is_supported

        if is_supported(self.model):
            return "fast"
        if requested == "fast":
            raise StageError(f"--engine fast does not support {type(self.model).__name__}; use --engine hf")
        logger.info("fast decoder does not support %s: using generate", type(self.model).__name__)
        return "hf"

    def chat_prompt(self, instruction: str, with_image: bool) -> str:
        return self.tokenizer.apply_chat_template(
            chat_messages(instruction, with_image), add_generation_prompt=True, tokenize=False
        )

    def estimate_length(self, instruction: str, image: tuple[int, int] | None) -> int:
        """Tokens of the prompt, with the image's token count estimated from its size (for bucketing)."""
        text = len(self.tokenizer(instruction, add_special_tokens=False)["input_ids"])
        if image is None:
            return text
        proc = self.image_processor
        unit = (proc.patch_size * proc.merge_size) ** 2
        size = getattr(proc, "size", None) or {}
        low, high = size.get("shortest_edge", unit), size.get("longest_edge", 16384 * unit)
        return text + int(min(max(image[0] * image[1], low), high) // unit)

    def generate(self, instructions: Sequence[str], images: Sequence[Image.Image | None]) -> list[str]:
        """Greedy captions for one batch (new tokens only, special tokens removed)."""
        from vlif_pipeline.vision.qwen_inputs import build_batch

        prompts = [self.chat_prompt(text, img is not None) for text, img in zip(instructions, images)]
        batch = build_batch(self.tokenizer, self.image_processor, prompts, images)
        inputs = batch.to(self.device, self.dtype, self.token_types)
        with self.torch.inference_mode():
            if self.engine == "fast":
                from vlif_pipeline.vision.fast_generate import greedy_generate

                new_tokens = greedy_generate(
                    self.model, inputs["input_ids"], inputs["attention_mask"], inputs.get("pixel_values"),
                    inputs.get("image_grid_thw"), self.max_new_tokens, self.eos_id, self.pad_id,
                )
            else:
                out = self.model.generate(**inputs)
                new_tokens = out[:, inputs["input_ids"].shape[1]:]
        texts = self.tokenizer.batch_decode(new_tokens.cpu(), skip_special_tokens=True)
        return [" ".join(text.split()) for text in texts]


# ---------------------------------------------------------------------------- the run


def load_image(path: str, max_pixels: int) -> Image.Image:
    """Decode one cached image fully (so failures surface here, per item), reduced to at most
    ``max_pixels`` (the model's per-image budget) while decoding.

    Why: the image processor would shrink a 9000 x 9000 photo to that budget anyway, but only after
    a batch of them had been held at full size (16 such images took the stage to 9.5 GiB). JPEGs
    are decoded at a reduced scale (``draft``); other formats are decoded once and reduced at once,
    so at most one full-size image exists at a time. Images within the budget are left as they are.
    """
    from vlif_pipeline.vision.qwen_inputs import to_rgb

    with Image.open(path) as img:
        width, height = img.size
        if width * height > max_pixels:
            scale = math.sqrt(max_pixels / (width * height))
            img.thumbnail((max(1, math.floor(width * scale)), max(1, math.floor(height * scale))), Image.Resampling.BICUBIC)
        return to_rgb(img)


def reduced_pixels(width: int, height: int, max_pixels: int) -> int:
    """Pixels of a ``width`` x ``height`` image after :func:`load_image`'s reduction (an upper bound)."""
    return min(width * height, max_pixels)


class ShardRun:
    """Captions the work list in length-sorted batches, committing each batch to the cache."""

    def __init__(
        self, captioner: Captioner, cache: CaptionCache, batch_size: int, batch_pixels: int, logger: logging.Logger
    ) -> None:
        self.captioner = captioner
        self.cache = cache
        self.batch_size = batch_size
        self.batch_pixels = batch_pixels
        self.logger = logger
        self.generated = 0

    def _caption(self, items: Sequence[WorkItem], images: Sequence[Image.Image | None]) -> dict[str, Result]:
        """Caption ``items``; on CUDA OOM shrink the batch size (for the rest of the run too) and
        retry in smaller batches; on any other error bisect down to the failing item."""
        torch = self.captioner.torch
        try:
            captions = self.captioner.generate([it.instruction for it in items], images)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            if len(items) == 1:
                self.logger.error("item i=%d: out of memory even alone", items[0].i)
                return {items[0].key: Result("", "failed")}
            self.batch_size = min(self.batch_size, len(items) // 2)
            self.logger.warning("CUDA out of memory at batch %d: batch size now %d", len(items), self.batch_size)
            return self._in_chunks(items, images)
        except Exception as err:  # one bad input must not kill the shard: bisect down to it
            if len(items) == 1:
                self.logger.error("item i=%d: generation failed: %s: %s", items[0].i, type(err).__name__, err)
                return {items[0].key: Result("", "failed")}
            half = len(items) // 2
            return {**self._caption(items[:half], images[:half]), **self._caption(items[half:], images[half:])}
        self.generated += len(items)
        status = {True: "ok", False: "text_only"}
        return {it.key: Result(c, status[img is not None]) for it, c, img in zip(items, captions, images)}

    def _in_chunks(self, items: Sequence[WorkItem], images: Sequence[Image.Image | None]) -> dict[str, Result]:
        """Caption in consecutive chunks of the current batch size (which may shrink meanwhile)."""
        results: dict[str, Result] = {}
        start = 0
        while start < len(items):
            size = self.batch_size
            results.update(self._caption(items[start:start + size], images[start:start + size]))
            start += size
        return results

    def _batches(self, work: list[WorkItem]) -> Iterator[list[WorkItem]]:
        """Consecutive batches of at most ``batch_size`` items and ``batch_pixels`` image pixels
        (a single item over the pixel budget goes alone): memory follows pixels, not item counts."""
        batch: list[WorkItem] = []
        pixels = 0
        for item in work:
            if batch and (len(batch) >= self.batch_size or pixels + item.pixels > self.batch_pixels):
                yield batch
                batch, pixels = [], 0
            batch.append(item)
            pixels += item.pixels
        if batch:
            yield batch

    def _load_images(
        self, batch: list[WorkItem], results: dict[str, Result]
    ) -> tuple[list[WorkItem], list[Image.Image | None]]:
        """Decode the batch's images; an undecodable one becomes an ``image_error`` result."""
        ready: list[WorkItem] = []
        images: list[Image.Image | None] = []
        for item in batch:
            try:
                images.append(
                    None if item.image_path is None else load_image(item.image_path, self.captioner.max_pixels)
                )
                ready.append(item)
            except Exception as err:  # Pillow raises many types for a corrupt file
                self.logger.error("item i=%d: cannot decode %s: %s", item.i, item.image_path, err)
                results[item.key] = Result("", "image_error")
        return ready, images

    def run(self, work: list[WorkItem]) -> dict[str, Result]:
        """Caption every distinct key in ``work``; returns key -> result (failures included)."""
        results: dict[str, Result] = {}
        started = last_log = time.monotonic()
        step = max(1, len(work) // 20)  # a progress line every 5% of the items, and at least every 30 s
        next_count = step
        for batch in self._batches(work):
            ready, images = self._load_images(batch, results)
            if ready:
                batch_results = self._caption(ready, images)
                committed = {k: r for k, r in batch_results.items() if r.status in ("ok", "text_only")}
                if committed:
                    self.cache.commit(committed)
                results.update(batch_results)
            if time.monotonic() - last_log > 30 or len(results) >= next_count or len(results) == len(work):
                rate = self.generated / max(time.monotonic() - started, 1e-9)
                left = duration((len(work) - len(results)) / rate) if rate > 0 else "?"
                self.logger.info("captions: %d / %d (%.1f items/s, about %s left)", len(results), len(work), rate, left)
                last_log = time.monotonic()
                next_count = len(results) + step
        return results


def write_shard(path: Path, rows: dict[int, Result], identity: str, prompt_hash: str, meta: dict[str, int]) -> None:
    """The shard parquet, sorted by i, with shard bookkeeping in the schema metadata for gather."""
    ids = sorted(rows)
    table = pa.table(
        {"i": ids, "caption": [rows[i].caption for i in ids], "status": [rows[i].status for i in ids],
         "model": [identity] * len(ids), "prompt_hash": [prompt_hash] * len(ids)},
        schema=OUTPUT_SCHEMA,
    ).replace_schema_metadata({"vlif": json.dumps(meta)})
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


TINY_WARNING = "model %s is the TINY RANDOMLY INITIALISED local model: its captions are NOT meaningful"


def is_tiny_random(model: str) -> bool:
    """Whether ``model`` is a local folder built by ``build-tiny-vlm`` (random weights)."""
    config = Path(model) / "config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get(TINY_MARKER))


def caption_shard(args: argparse.Namespace, logger: logging.Logger) -> None:
    """The stage body: plan, reuse the cache, caption the rest, write the shard."""
    tiny = is_tiny_random(args.model)
    if tiny:
        logger.warning(TINY_WARNING, args.model)
    spec = get_prompt(args.prompt)
    items = read_inputs(args.manifest, args.items)
    work, fixed = plan(items, spec, args.shard, args.n_shards, args.no_image_policy)
    identity = model_identity(args.model)
    cache = CaptionCache(args.cache_dir, identity, spec.hash, args.max_new_tokens)
    cached = cache.load()
    todo_by_key = {item.key: item for item in work if item.key not in cached}
    logger.info(
        "shard %d/%d: %d items (%d without the model), %d cached, %d distinct prompts to caption; cache %s",
        args.shard, args.n_shards, len(work) + len(fixed), len(fixed), sum(it.key in cached for it in work),
        len(todo_by_key), cache.dir,
    )
    fresh: dict[str, Result] = {}
    if todo_by_key:
        captioner = Captioner(args.model, args.device, args.engine, args.max_new_tokens, args.threads, logger)

        def with_length(item: WorkItem) -> WorkItem:
            row = items[item.i]
            size = (row["width"], row["height"]) if item.image_path else None
            pixels = reduced_pixels(*size, captioner.max_pixels) if size else 0
            return replace(item, sort_length=captioner.estimate_length(item.instruction, size), pixels=pixels)

        todo = sorted(map(with_length, todo_by_key.values()), key=lambda it: (it.sort_length, it.i))
        fresh = ShardRun(captioner, cache, args.batch_size, args.batch_pixels, logger).run(todo)
    rows = dict(fixed)
    for item in work:
        rows[item.i] = cached.get(item.key) or fresh[item.key]
    statuses = Counter(r.status for r in rows.values()).most_common()
    logger.info("shard %d/%d statuses: %s", args.shard, args.n_shards, ", ".join(f"{s}={n}" for s, n in statuses))
    bad = sum(r.status in ("failed", "image_error") for r in rows.values())
    if rows and bad / len(rows) > args.max_failed_fraction:
        raise StageError(
            f"{bad} of {len(rows)} items failed to caption (> --max-failed-fraction {args.max_failed_fraction}); "
            f"see the log; committed captions are kept in {cache.dir}"
        )
    meta = {"shard": args.shard, "n_shards": args.n_shards, "n_items": len(items)}
    write_shard(args.out, rows, identity, spec.hash, meta)
    if tiny:
        logger.warning(TINY_WARNING, args.model)
    logger.info("wrote %s (%d rows)", args.out, len(rows))


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="caption", description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--items", required=True, type=Path)
    parser.add_argument("--model", required=True, help="hub id or local folder")
    parser.add_argument("--prompt", required=True, choices=PROMPTS)
    parser.add_argument("--shard", required=True, type=int)
    parser.add_argument("--n-shards", required=True, type=int)
    parser.add_argument("--cache-dir", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batch-pixels", type=int, default=32_000_000,
                        help="image pixels per batch at most, after each image's reduction to the model's budget")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--engine", choices=["auto", "hf", "fast"], default="auto")
    parser.add_argument("--no-image-policy", choices=["text_only", "empty"], default="text_only")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (the tiny model's ops are too small to gain from more, "
                        "and intra-op threads thrash when other jobs share the cores)")
    parser.add_argument("--max-failed-fraction", type=float, default=0.05,
                        help="fail the stage when more items than this fraction fail")
    parser.add_argument("--log", default=None)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    """CLI: see ``docs/stages.md`` (``caption``)."""
    args = parse_args(argv)
    logger = setup_logging(args.log)

    def body() -> None:
        if not 0 <= args.shard < args.n_shards:
            raise StageError(f"--shard must be in 0..{args.n_shards - 1} (--n-shards {args.n_shards}), got {args.shard}")
        if min(args.batch_size, args.batch_pixels, args.max_new_tokens, args.threads) < 1:
            raise StageError("--batch-size, --batch-pixels, --max-new-tokens and --threads must be >= 1")
        caption_shard(args, logger)

    return run_stage(body, logger)
