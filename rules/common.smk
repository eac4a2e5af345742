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
SHARED_TRAIN_KEYS = ("learning_rate", "batch_size", "embedding_dim", "n_layers", "reg_weight", "max_epochs", "patience")


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

    Each entry is a module path (`amazon/ingest.py`) or a folder (`graphs`: its Python and C
    files); `io.py` and `__main__.py` are shared by every stage.
    """
    files = [PKG / "io.py", PKG / "__main__.py"]
    for module in modules:
        target = PKG / module
        if target.is_dir():
            files += sorted(f for f in target.iterdir() if f.suffix in (".py", ".c", ".h"))
        else:
            files.append(target)
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


def caption_shards(w):
    n = C(w.ds)["vlm"]["shards"]
    return [
        f"results/{w.ds}/captions/shards/{w.vlm}__{w.prompt}__{k}of{n}.parquet" for k in range(n)
    ]


def check_vlm(w):
    """The {vlm} in a caption file name must be the dataset's configured model."""
    expected = slug(C(w.ds)["vlm"]["model"])
    if w.vlm != expected:
        raise ValueError(f"results/{w.ds}/captions: vlm '{w.vlm}' is not the configured model '{expected}'")
    return vlm_model(w.ds)


def train_inputs(w):
    run = parse_run_id(w.run)
    cfg = C(w.ds)
    base = f"results/{w.ds}"
    files = {**kcore_files(w.ds), "user_item": f"{base}/graphs/user_item.npz"}
    if run["variant"]:
        files["text"] = f"{base}/features/text.npy"
        files["visual"] = f"{base}/features/visual__{run['variant']}.npy"
        files["item_knn"] = f"{base}/graphs/item_knn__{run['variant']}__k{cfg['graphs']['item_k']}.npz"
    if run["model"] == "vlif":
        files["user_user"] = f"{base}/graphs/user_user__k{cfg['graphs']['user_k']}.npz"
    return files


def train_params(w):
    """Hyperparameters as JSON: a change reruns exactly the runs it concerns."""
    run = parse_run_id(w.run)
    cfg = C(w.ds)
    params = {key: cfg["train"][key] for key in SHARED_TRAIN_KEYS} | {"seed": cfg["seed"]}
    if run["model"] == "vlif":
        params |= {"lambda": cfg["train"]["lambda"], "fusion": run["fusion"]}
    return quoted_json(params)


def optional_inputs(w, input):
    flags = {"text": "--text", "visual": "--visual", "item_knn": "--item-knn", "user_user": "--user-user"}
    return " ".join(f"{flag} {input[name]}" for name, flag in flags.items() if name in input.keys())


def table_runs(ds):
    cfg = C(ds)
    variant = visual_variant(cfg)
    baselines = [run_id(m, variant) for m in cfg["report"]["baselines"]]
    return [f"results/{ds}/runs/{r}/metrics.json" for r in baselines + [main_run(cfg)]]


def ablation_runs(ds):
    """Table 2 of the paper: image features (with PID fusion), then fusions (with the main run's features)."""
    cfg = C(ds)
    entry = cfg["dataset"]
    variants = [] if entry["format"] == "mmrec" else ["vlm_plain", "vlm_title"]
    if entry["format"] in ("synthetic", "mmrec") or "image_features" in entry:
        variants.insert(0, "original")
    runs = [run_id("vlif", v, "pid") for v in variants]
    runs += [run_id("vlif", visual_variant(cfg), f) for f in ("pooling", "concat", "weighted_concat")]
    return [f"results/{ds}/runs/{r}/metrics.json" for r in runs]


def is_mmrec(ds):
    return C(ds)["dataset"]["format"] == "mmrec"


def mmrec_dir(ds):
    return C(ds)["dataset"]["path"]


def mmrec_name(ds):
    """The configured `<name>.inter` of an MMRec folder, or None for its only `*.inter` file."""
    return C(ds)["dataset"].get("name")


def mmrec_files(ds):
    """The files of an MMRec folder that kcore reads: the .inter file(s) and the id mappings present.

    Declared one by one: a folder input reruns nothing when a file in it is rewritten.
    """
    folder = Path(mmrec_dir(ds))
    name = mmrec_name(ds)
    files = [folder / f"{name}.inter"] if name else sorted(folder.glob("*.inter"))
    files += [path for path in (folder / "u_id_mapping.csv", folder / "i_id_mapping.csv") if path.is_file()]
    return [str(path) for path in files]


def kcore_inputs(w):
    """An MMRec folder enters here, with its own ids and split; raw datasets come from ingest."""
    if is_mmrec(w.ds):
        return {"mmrec": mmrec_dir(w.ds), "mmrec_files": mmrec_files(w.ds)}
    return {"interactions": f"results/{w.ds}/interactions.parquet", "item_table": f"results/{w.ds}/items.parquet"}


def kcore_args(w, input):
    if is_mmrec(w.ds):
        name = mmrec_name(w.ds)
        named = f" --mmrec-name {shlex.quote(name)}" if name else ""
        return f"--format mmrec --mmrec-dir {shlex.quote(input.mmrec)}{named}"
    cfg = C(w.ds)
    return (
        f"--interactions {input.interactions} --items {input.item_table} --k {cfg['kcore']}"
        f" --split {cfg['split']} --seed {cfg['seed']} --missing-meta {cfg['missing_meta']}"
    )


def text_feature_inputs(w):
    if is_mmrec(w.ds):
        return {"source": f"{mmrec_dir(w.ds)}/text_feat.npy", "stats": f"results/{w.ds}/kcore/stats.json"}
    return {"item_table": f"results/{w.ds}/kcore/items.parquet"}


def text_feature_args(w, input):
    """MMRec folders ship their text features; everything else is encoded with the configured model."""
    if is_mmrec(w.ds):
        return f"mmrec-features --source {shlex.quote(input.source)} --stats {input.stats}"
    model = shlex.quote(C(w.ds)["text_encoder"])
    return f"encode-text --items {input.item_table} --model {model} --cache-dir results/cache/embeddings"


def original_feature_inputs(w):
    if is_mmrec(w.ds):
        return {"source": f"{mmrec_dir(w.ds)}/image_feat.npy", "stats": f"results/{w.ds}/kcore/stats.json"}
    return {"features": raw(w.ds, "image_features"), "item_table": f"results/{w.ds}/kcore/items.parquet"}


def original_feature_args(w, input):
    if is_mmrec(w.ds):
        return f"mmrec-features --source {shlex.quote(input.source)} --stats {input.stats}"
    report_path = f"results/{w.ds}/features/visual__original.report.json"
    return f"original-features --features {shlex.quote(input.features)} --items {input.item_table} --report {report_path}"
