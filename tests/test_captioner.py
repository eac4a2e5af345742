"""The caption and caption-gather stages with the tiny local model: statuses, shards, cache,
failure isolation, OOM halving, and resuming after SIGKILL."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from vlif_pipeline.io import StageError
from vlif_pipeline.vision import captioner, gather, images, tiny_model
from vlif_pipeline.vision.prompts import get_prompt

N_ITEMS = 30
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny model + 30 items: most with 64x64 images, some without URL, some without title,
    two sharing one image, one whose cached file gets corrupted after the manifest is written."""
    root = tmp_path_factory.mktemp("cap")
    assert tiny_model.main(["--out-dir", str(root / "model"), "--seed", "3"]) == 0
    rng = np.random.default_rng(0)
    (root / "raw" / "images").mkdir(parents=True)
    urls, titles = [], []
    for i in range(N_ITEMS):
        titles.append(None if i in (4, 23) else f"blue cotton blanket {i}")
        if i % 6 == 5:
            urls.append(None)
            continue
        name = "images/shared.png" if i in (1, 2) else f"images/{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "raw" / name)
        urls.append(name)
    pl.DataFrame({"i": list(range(N_ITEMS)), "item_id": [f"A{i}" for i in range(N_ITEMS)], "title": titles,
                  "image_url": urls}).write_parquet(root / "items.parquet")
    assert images.main(["--items", str(root / "items.parquet"), "--base-dir", str(root / "raw"), "--cache-dir",
                        str(root / "imgcache"), "--out", str(root / "manifest.parquet"), "--allow-local", "true"]) == 0
    manifest = pl.read_parquet(root / "manifest.parquet")
    Path(manifest["path"][7]).write_bytes(b"corrupted after fetching")
    return {"root": root, "model": root / "model", "items": root / "items.parquet",
            "manifest": root / "manifest.parquet"}


def caption_argv(data: dict[str, Path], cache: Path, out: Path, shard: int = 0, n_shards: int = 1,
                 *extra: str) -> list[str]:
    return ["--manifest", str(data["manifest"]), "--items", str(data["items"]), "--model", str(data["model"]),
            "--prompt", "title_cot", "--shard", str(shard), "--n-shards", str(n_shards), "--cache-dir", str(cache),
            "--out", str(out), "--batch-size", "4", "--max-new-tokens", "6", "--max-failed-fraction", "0.1", *extra]


def expected_status(i: int) -> str:
    if i == 7:
        return "image_error"
    if i % 6 == 5:
        return "empty" if i == 23 else "text_only"
    return "ok"


def test_shards_gather_and_cache(data: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    shards = [tmp_path / f"shard{k}.parquet" for k in range(2)]
    for k, out in enumerate(shards):
        assert captioner.main(caption_argv(data, cache, out, k, 2, "--log", str(tmp_path / "log.txt"))) == 0
    log = (tmp_path / "log.txt").read_text()
    assert log.count("TINY RANDOMLY INITIALISED") == 4  # start and end of both shards
    shard0 = pl.read_parquet(shards[0])
    assert shard0["i"].to_list() == list(range(0, N_ITEMS, 2))
    assert gather.main(["--shards", str(shards[1]), str(shards[0]), "--out", str(tmp_path / "all.parquet")]) == 0
    table = pl.read_parquet(tmp_path / "all.parquet")
    assert table.columns == ["i", "caption", "status", "model", "prompt_hash"]
    assert table["i"].to_list() == list(range(N_ITEMS))
    assert table["status"].to_list() == [expected_status(i) for i in range(N_ITEMS)]
    ok = table.filter(pl.col("status").is_in(["ok", "text_only"]))
    assert (ok["caption"].str.len_chars() > 0).all()
    assert (table.filter(~pl.col("status").is_in(["ok", "text_only"]))["caption"] == "").all()
    assert table["prompt_hash"].unique().to_list() == [get_prompt("title_cot").hash]
    assert table["model"][0].startswith("model@")

    # a rerun is served from the cache; only the undecodable image is tried again
    again = tmp_path / "again.parquet"
    assert captioner.main(caption_argv(data, cache, again, 0, 1, "--log", str(tmp_path / "log2.txt"))) == 0
    assert "1 distinct prompts to caption" in (tmp_path / "log2.txt").read_text()
    rerun = pl.read_parquet(again)
    assert rerun.filter(pl.col("status") != "image_error").equals(table.filter(pl.col("status") != "image_error"))

    # policy "empty" marks every imageless item; another max_new_tokens is another cache namespace
    empty = tmp_path / "empty.parquet"
    assert captioner.main(caption_argv(data, cache, empty, 0, 1, "--no-image-policy", "empty")) == 0
    statuses = pl.read_parquet(empty)["status"].to_list()
    assert [s for i, s in enumerate(statuses) if i % 6 == 5] == ["empty"] * len(range(5, N_ITEMS, 6))
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 1
    assert captioner.main(caption_argv(data, cache, empty, 0, 1, "--max-new-tokens", "3")) == 0
    assert len([d for d in cache.iterdir() if d.is_dir()]) == 2


def test_fast_engine_matches_generate(data: dict[str, Path], tmp_path: Path) -> None:
    """The project's own decoder (run on CPU here) gives generate's greedy tokens, also for a checkpoint
    that ships sampling settings and a repetition penalty (Qwen2.5-VL-7B-Instruct's values), which
    generate() would otherwise take from it."""
    model = tmp_path / "model"
    shutil.copytree(data["model"], model)
    settings = json.loads((model / "generation_config.json").read_text())
    settings.update(do_sample=True, repetition_penalty=1.05, temperature=0.1, top_p=0.001, top_k=1)
    (model / "generation_config.json").write_text(json.dumps(settings))
    outs = []
    for engine in ("hf", "fast"):
        out = tmp_path / f"{engine}.parquet"
        argv = caption_argv(data, tmp_path / engine, out, 1, 3, "--engine", engine, "--max-new-tokens", "40")
        argv[argv.index("--model") + 1] = str(model)
        assert captioner.main(argv) == 0
        outs.append(pl.read_parquet(out))
    assert outs[0].equals(outs[1])
    assert (outs[0]["status"] == "ok").sum() >= 5


def test_too_many_failures_fail_the_stage(data: dict[str, Path], tmp_path: Path) -> None:
    argv = caption_argv(data, tmp_path / "cache", tmp_path / "out.parquet") + ["--max-failed-fraction", "0.01"]
    assert captioner.main(argv) == 1
    assert not (tmp_path / "out.parquet").exists()


def test_gather_rejects_missing_and_duplicated(data: dict[str, Path], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    s0, s1 = tmp_path / "s0.parquet", tmp_path / "s1.parquet"
    assert captioner.main(caption_argv(data, cache, s0, 0, 2)) == 0
    assert captioner.main(caption_argv(data, cache, s1, 1, 2)) == 0
    with pytest.raises(StageError, match=r"expected each of 0..1 exactly once"):
        gather.gather([s0])
    with pytest.raises(StageError, match=r"expected each of 0..1 exactly once"):
        gather.gather([s0, s0])
    table = pq.read_table(s1)
    doctored = table.slice(0, 3).replace_schema_metadata(table.schema.metadata)
    pq.write_table(doctored, tmp_path / "short.parquet")
    with pytest.raises(StageError, match=r"missing \[7, 9, 11"):
        gather.gather([s0, tmp_path / "short.parquet"])
    pq.write_table(table.replace_schema_metadata(None), tmp_path / "bare.parquet")
    with pytest.raises(StageError, match="without its shard metadata"):
        gather.gather([s0, tmp_path / "bare.parquet"])


class FakeCaptioner:
    """Stands in for the model: raises CUDA OOM above a batch size, fails on one instruction."""

    torch = torch

    def __init__(self, max_batch: int, poison: str) -> None:
        self.max_batch, self.poison, self.sizes = max_batch, poison, []

    def generate(self, instructions, images):
        self.sizes.append(len(instructions))
        if len(instructions) > self.max_batch:
            raise torch.cuda.OutOfMemoryError("simulated")
        if any(self.poison in text for text in instructions):
            raise RuntimeError("simulated bad input")
        return [f"caption of {text}" for text in instructions]


def test_oom_halves_and_one_failure_is_isolated(tmp_path: Path) -> None:
    cache = captioner.CaptionCache(tmp_path, "fake", "p", 8)
    work = [captioner.WorkItem(i, f"k{i}", f"item {i}", None) for i in range(20)]
    fake = FakeCaptioner(max_batch=4, poison="item 13")
    results = captioner.ShardRun(fake, cache, 16, 10**9, logging.getLogger("test")).run(work)
    assert fake.sizes[:3] == [16, 8, 4]  # halved until it fits ...
    assert max(fake.sizes[3:]) <= 4  # ... and kept small afterwards
    assert results["k13"] == captioner.Result("", "failed")
    assert all(results[f"k{i}"] == captioner.Result(f"caption of item {i}", "text_only") for i in range(20) if i != 13)
    assert set(cache.load()) == {f"k{i}" for i in range(20)} - {"k13"}  # failures are not cached


def test_batches_are_bounded_by_pixels_as_well_as_by_count(tmp_path: Path) -> None:
    cache = captioner.CaptionCache(tmp_path, "fake", "p", 8)
    pixels = [10, 10, 10, 50, 5, 100, 0, 0]
    work = [captioner.WorkItem(i, f"k{i}", f"item {i}", None, pixels=p) for i, p in enumerate(pixels)]
    fake = FakeCaptioner(max_batch=99, poison="none")
    captioner.ShardRun(fake, cache, 3, 60, logging.getLogger("test")).run(work)
    assert fake.sizes == [3, 2, 1, 2]  # 30 | 50 + 5 | 100 alone (over the budget) | two without images


def test_a_huge_image_is_reduced_to_the_models_budget_while_decoding(tmp_path: Path) -> None:
    """A 6000 x 4000 photo comes out within the budget, aspect kept; a small one is left as it is."""
    Image.new("RGB", (6000, 4000), (200, 30, 30)).save(tmp_path / "big.jpg", quality=80)
    Image.new("RGBA", (6000, 4000), (0, 0, 0, 0)).save(tmp_path / "big.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    for name in ("big.jpg", "big.png"):
        image = captioner.load_image(str(tmp_path / name), 50_176)
        assert image.mode == "RGB" and image.width * image.height <= 50_176
        assert abs(image.width / image.height - 1.5) < 0.02
    assert captioner.load_image(str(tmp_path / "big.png"), 50_176).getpixel((5, 5)) == (255, 255, 255)
    assert captioner.load_image(str(tmp_path / "small.png"), 50_176).size == (40, 30)
    assert captioner.reduced_pixels(6000, 4000, 50_176) == 50_176 and captioner.reduced_pixels(40, 30, 50_176) == 1200


def test_killed_run_resumes_without_redoing(data: dict[str, Path], tmp_path: Path) -> None:
    cache, out, log = tmp_path / "cache", tmp_path / "out.parquet", tmp_path / "run.log"
    argv = caption_argv(data, cache, out) + ["--batch-size", "1", "--max-new-tokens", "32", "--log", str(log)]
    cmd = [sys.executable, "-m", "vlif_pipeline", "caption", *argv]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    chunks: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        chunks = list(cache.glob("*/*.parquet"))
        if len(chunks) >= 4:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not out.exists()
    first = {p: p.read_bytes() for p in cache.glob("*/*.parquet")}
    committed = {key for p in first for key in pq.read_table(p)["key"].to_pylist()}
    assert 4 <= len(committed) < N_ITEMS - 6

    assert captioner.main(argv) == 0  # resume in-process (saves a second interpreter start)
    assert f"{len(committed)} cached" in log.read_text().split("shard 0/1:")[-1]
    assert all(p.read_bytes() == blob for p, blob in first.items())  # committed chunks untouched
    keys = [key for p in cache.glob("*/*.parquet") for key in pq.read_table(p)["key"].to_pylist()]
    assert len(keys) == len(set(keys))  # nothing captioned twice
    table = pl.read_parquet(out)
    assert table["i"].to_list() == list(range(N_ITEMS))
    assert table["status"].to_list() == [expected_status(i) for i in range(N_ITEMS)]
    assert len(set(keys)) == table.filter(pl.col("status").is_in(["ok", "text_only"])).height
