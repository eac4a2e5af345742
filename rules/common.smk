"""Helpers shared by all rules: per-dataset configuration, file locations, code dependencies."""

import json
import shlex
from urllib.parse import urlparse

from vlif_pipeline.config import (
    TINY_VLM,
    VARIANT_PROMPT,
    dataset_config,
    is_url,
    main_run,
    parse_run_id,
    run_id,
    slug,
    visual_variant,
)

PKG = Path(workflow.basedir) / "src" / "vlif_pipeline"
CPU_ENV = "../envs/cpu.yaml"
GPU_ENV = "../envs/gpu.yaml"
SYNTHETIC_FILES = {"reviews": "reviews.json.gz", "meta": "meta.json.gz", "image_features": "image_features.b"}
TINY_VLM_DIR = f"results/models/{TINY_VLM}"
STAGE = "python -m vlif_pipeline"


wildcard_constraints:
    ds=r"[A-Za-z0-9_-]+",
    key=r"reviews|meta|image_features",
    variant=r"vlm_title|vlm_plain|original",
    prompt=r"title_cot|plain",
    k=r"\d+",
    shard=r"\d+",
    n=r"\d+",


def C(ds):
    """The merged configuration of dataset `ds` (global sections + the dataset's overrides)."""
    return dataset_config(config, ds)


def code(*modules):
    """Source files of a stage, as inputs: editing them reruns the stage and its dependants.

    Each entry is a module path (`amazon/ingest.py`) or a subpackage (`graphs`); `io.py` and
    `config.py` are shared by every stage.
    """
    files = [PKG / "io.py", PKG / "__main__.py"]
    for module in modules:
        target = PKG / module
        files += sorted(target.glob("*.py")) if target.is_dir() else [target]
    return [str(f) for f in files]


def raw(ds, key):
    """Where a raw input of `ds` lives: generated, downloaded, or the user's local path."""
    entry = C(ds)["dataset"]
    if entry["format"] == "synthetic":
        return f"results/{ds}/raw/{SYNTHETIC_FILES[key]}"
    location = entry[key]
    if is_url(location):
        return f"results/{ds}/raw/{key}/{Path(urlparse(location).path).name}"
    return location


def vlm_model(ds):
    """The captioning model of `ds` as the caption stage loads it: a hub id or a folder."""
    model = C(ds)["vlm"]["model"]
    return TINY_VLM_DIR if model == TINY_VLM else model


def vlm_inputs(ds):
    """The locally built tiny model is a file dependency; hub models and folders are not."""
    return [TINY_VLM_DIR] if C(ds)["vlm"]["model"] == TINY_VLM else []


def kcore_files(ds):
    """The k-core stage's files (named `item_table`: `items` is reserved by Snakemake)."""
    base = f"results/{ds}/kcore"
    return {
        "interactions": f"{base}/interactions.parquet",
        "users": f"{base}/users.parquet",
        "item_table": f"{base}/items.parquet",
        "stats": f"{base}/stats.json",
    }


def quoted_json(obj):
    return shlex.quote(json.dumps(obj, sort_keys=True))
