"""Helpers shared by all rules: per-dataset configuration, file locations, code dependencies.

Each rule reads like a table (input, output, params, log, ...) and takes every value that
depends on the configuration from a named helper here; no rule holds logic of its own.
"""

import json
import re
import shlex
from urllib.parse import urlparse

from vlif_pipeline.codedeps import stage_sources
from vlif_pipeline.config import TINY_VLM, dataset_config, is_url, main_run, mmrec_inter, run_id, slug
from vlif_pipeline.config import parse_run_id, train_params as run_params, visual_variant
from vlif_pipeline.registry import FUSIONS, PROMPTS, VARIANTS

CPU_ENV = "../envs/cpu.yaml"
GPU_ENV = "../envs/gpu.yaml"
SYNTHETIC_FILES = {"reviews": "reviews.json.gz", "meta": "meta.json.gz", "image_features": "image_features.b"}
MMREC_FEATURES = {"text": "text_feat.npy", "visual__original": "image_feat.npy"}  # ours -> the folder's
TINY_VLM_DIR = f"results/models/{TINY_VLM}"


wildcard_constraints:
    ds=r"[A-Za-z0-9_-]+",
    key=r"reviews|meta|image_features",
    variant="|".join(VARIANTS),
    prompt="|".join(PROMPTS),
    k=r"\d+",
    shard=r"\d+",
    n=r"\d+",


def C(ds):
    """The merged configuration of dataset `ds` (global sections + the dataset's overrides)."""
    return dataset_config(config, ds)


def code(stage):
    """Source files of `python -m vlif_pipeline <stage>`, as inputs: editing one reruns the stage and
    its dependants. Computed from the stage module's imports (vlif_pipeline/codedeps.py)."""
    return [str(path) for path in stage_sources(stage)]


def setting(*keys):
    """For params and resources: the dataset's merged configuration at `keys`, e.g. ("vlm", "gpus")."""

    def lookup(w):
        value = C(w.ds)
        for key in keys:
            value = value[key]
        return value

    return lookup


def settings(section, *keys):
    """For params: the mapping of `keys` of one configuration section of the dataset."""

    def lookup(w):
        return {key: C(w.ds)[section][key] for key in keys}

    return lookup


def datasets(mmrec):
    """A wildcard constraint: the configured datasets that are (or are not) MMRec folders, which
    enter the pipeline through their own rules (`mmrec_import`, `mmrec_features`)."""
    names = [re.escape(ds) for ds, entry in config["datasets"].items() if (entry["format"] == "mmrec") == mmrec]
    return "|".join(names) or "(?!)"


def raw(ds, key):
    """Where a raw input of `ds` lives: generated, downloaded, or the user's local path."""
    entry = C(ds)["dataset"]
    if entry["format"] == "synthetic":
        return f"results/{ds}/raw/{SYNTHETIC_FILES[key]}"
    location = entry[key]
    if is_url(location):
        return f"results/{ds}/raw/{key}/{Path(urlparse(location).path).name}"
    return location


def raw_file(key):
    """For inputs: the raw file `key` (reviews, meta, image_features) of the dataset."""

    def lookup(w):
        return raw(w.ds, key)

    return lookup


def raw_folder(key):
    """For params: the folder of the raw file `key` (relative image paths in a meta dump start there)."""

    def lookup(w):
        return str(Path(raw(w.ds, key)).parent)

    return lookup


def local_images_allowed(w):
    """Local image paths are read when the user allows them, and always for a generated dataset."""
    cfg = C(w.ds)
    return cfg["images"]["allow_local"] or cfg["dataset"]["format"] == "synthetic"


def download_url(w):
    return C(w.ds)["dataset"][w.key]


def ingest_format(w):
    """The demo is generated in the 2014 format."""
    fmt = C(w.ds)["dataset"]["format"]
    return "amazon2014" if fmt == "synthetic" else fmt


def vlm_model(ds):
    """The captioning model of `ds` as the caption stage loads it: a hub id or a folder."""
    model = C(ds)["vlm"]["model"]
    return TINY_VLM_DIR if model == TINY_VLM else model


def vlm_inputs(w):
    """The locally built tiny model is a file dependency; hub models and folders are not."""
    return [TINY_VLM_DIR] if C(w.ds)["vlm"]["model"] == TINY_VLM else []


def check_vlm(w):
    """The {vlm} in a caption file name must be the dataset's configured model."""
    expected = slug(C(w.ds)["vlm"]["model"])
    if w.vlm != expected:
        raise ValueError(f"results/{w.ds}/captions: vlm '{w.vlm}' is not the configured model '{expected}'")
    return vlm_model(w.ds)


def caption_shards(w):
    n = C(w.ds)["vlm"]["shards"]
    return [f"results/{w.ds}/captions/shards/{w.vlm}__{w.prompt}__{k}of{n}.parquet" for k in range(n)]


def captions_file(ds, variant):
    """The captions that a VLM visual variant encodes: the configured model's, with its prompt."""
    return f"results/{ds}/captions/{slug(C(ds)['vlm']['model'])}__{VARIANTS[variant].prompt}.parquet"


def variant_captions(w):
    return captions_file(w.ds, w.variant)


def main_variant(w):
    return visual_variant(C(w.ds))


def visual_inputs(w):
    """The files that say what the main run's visual modality was (report/visual.py): captions and
    the images manifest for VLM variants, the CNN features' report for raw `original` features."""
    cfg = C(w.ds)
    variant = visual_variant(cfg)
    if VARIANTS[variant].prompt is not None:
        return {"captions": captions_file(w.ds, variant), "manifest": f"results/{w.ds}/images/manifest.parquet"}
    if cfg["dataset"]["format"] != "mmrec":
        return {"cnn_report": f"results/{w.ds}/features/visual__original.report.json"}
    return {}


def title_flag(w):
    return "--prepend-title" if C(w.ds)["captions"]["prepend_title"] else "--no-prepend-title"


def knn_weights(w):
    """The item kNN graph's weights of the visual and the text similarities: S = w S_v + (1 - w) S_t."""
    weight = C(w.ds)["graphs"]["visual_weight"]
    return [weight, round(1 - weight, 10)]


def kcore_files(ds):
    """The k-core stage's files (named `item_table`: `items` is reserved by Snakemake)."""
    base = f"results/{ds}/kcore"
    return {
        "interactions": f"{base}/interactions.parquet",
        "users": f"{base}/users.parquet",
        "item_table": f"{base}/items.parquet",
        "stats": f"{base}/stats.json",
    }


def mmrec_files(w):
    """The MMRec folder's files that its import reads: the .inter file and the id mappings present.

    Declared one by one: a folder input reruns nothing when a file in it is rewritten.
    """
    inter = mmrec_inter(C(w.ds)["dataset"])
    maps = [path for path in (inter.parent / "u_id_mapping.csv", inter.parent / "i_id_mapping.csv") if path.is_file()]
    return {"inter": str(inter), "mappings": [str(path) for path in maps]}


def mmrec_feature_file(w):
    """The MMRec folder's file for our feature file {feature}."""
    return str(Path(C(w.ds)["dataset"]["path"]) / MMREC_FEATURES[w.feature])


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


def run_model(w):
    return parse_run_id(w.run)["model"]


def train_params(w):
    """Hyperparameters as JSON: a change reruns exactly the runs it concerns."""
    return shlex.quote(json.dumps(run_params(C(w.ds), w.run), sort_keys=True))


def input_flags(**flags):
    """For params: each of the named inputs that the job has, as `--flag path` (quoted), for stages
    whose optional inputs depend on the run (features and graphs only where a model uses them)."""

    def present(w, input):
        return " ".join(f"{flag} {shlex.quote(str(input[name]))}" for name, flag in flags.items() if name in input.keys())

    return present


def main_run_metrics(w):
    return f"results/{w.ds}/runs/{main_run(C(w.ds))}/metrics.json"


def config_json(w):
    return shlex.quote(json.dumps(C(w.ds), sort_keys=True))


def table_runs(w):
    cfg = C(w.ds)
    variant = visual_variant(cfg)
    baselines = [run_id(m, variant) for m in cfg["report"]["baselines"]]
    return [f"results/{w.ds}/runs/{r}/metrics.json" for r in baselines + [main_run(cfg)]]


def ablation_runs(w):
    """Table 2 of the paper: image features (with PID fusion), then fusions (with the main run's features)."""
    cfg = C(w.ds)
    entry = cfg["dataset"]
    variants = [] if entry["format"] == "mmrec" else ["vlm_plain", "vlm_title"]
    if entry["format"] in ("synthetic", "mmrec") or "image_features" in entry:
        variants.insert(0, "original")
    runs = [run_id("vlif", v, "pid") for v in variants]
    runs += [run_id("vlif", visual_variant(cfg), f) for f in FUSIONS if f != "pid"]
    return [f"results/{w.ds}/runs/{r}/metrics.json" for r in runs]
