"""Helpers shared by all rules: per-dataset configuration, file locations, code dependencies.

Each rule reads like a table (input, output, params, log, ...) and takes every value that
depends on the configuration from a named helper here; no rule holds logic of its own.
"""

import json
import re
import shlex
from types import SimpleNamespace
from urllib.parse import urlparse

from vlif_pipeline import sweep
from vlif_pipeline.codedeps import stage_sources
from vlif_pipeline.config import TINY_VLM, dataset_config, is_url, item_graph_weight, main_run, mmrec_inter, run_id, slug
from vlif_pipeline.config import parse_run_id, train_params as run_params, visual_variant
from vlif_pipeline.registry import FUSIONS, MODELS, PROMPTS, VARIANTS

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
    weight=r"[0-9.e-]+",


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


def datasets_where(test):
    """A wildcard constraint: the configured datasets whose entry passes `test`, so that each
    dataset's files come from the one rule for its kind (an MMRec folder enters through
    `mmrec_import` and `mmrec_features`, raw dumps through `kcore`, `encode_text`, ...)."""
    names = [re.escape(ds) for ds, entry in config["datasets"].items() if test(entry)]
    return "|".join(names) or "(?!)"


def mmrec_folder(entry):
    return entry["format"] == "mmrec"


def raw_dumps(entry):
    return entry["format"] != "mmrec"


def cnn_feature_file(entry):
    """Whether the CNN features come from a raw .b file (generated, or named by image_features)."""
    return entry["format"] != "mmrec" or "image_features" in entry


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
    weight = float(w.weight)
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
    """The files an MMRec import reads: the .inter file, the id mappings present and, when the
    dataset names one, the raw meta dump whose records it joins on asin.

    Declared one by one: a folder input reruns nothing when a file in it is rewritten.
    """
    entry = C(w.ds)["dataset"]
    inter = mmrec_inter(entry)
    maps = [path for path in (inter.parent / "u_id_mapping.csv", inter.parent / "i_id_mapping.csv") if path.is_file()]
    files = {"inter": str(inter), "mappings": [str(path) for path in maps]}
    if "meta" in entry:
        files["meta"] = raw(w.ds, "meta")
    return files


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
        weight = format(item_graph_weight(cfg, run["model"]), "g")
        files["item_knn"] = f"{base}/graphs/item_knn__{run['variant']}__k{cfg['graphs']['item_k']}__w{weight}.npz"
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


def run_metrics(ds, run):
    return f"results/{ds}/runs/{run}/metrics.json"


def main_parts(ds, model):
    """The features and fusion of `model`'s row in the comparison table: the main run's."""
    cfg = C(ds)
    variant = visual_variant(cfg) if MODELS[model].uses_features else None
    return variant, (cfg["train"]["fusion"] if model == "vlif" else None)


def sweep_plan(w):
    """The grid of {model} on the main run's features, in grid order: each point with its runs' files."""
    cfg = C(w.ds)
    variant, fusion = main_parts(w.ds, w.model)
    plan = [
        {"settings": point, "runs": [run_metrics(w.ds, run_id(w.model, variant, fusion, sweep.name(run)))
                                     for run in sweep.with_seeds(cfg, point)]}
        for point in sweep.points(cfg, w.model)
    ]
    if not plan:
        raise ValueError(f"results/{w.ds}/sweep/{w.model}: the configuration has no sweep.{w.model} for dataset {w.ds}")
    return plan


def sweep_inputs(w):
    return [path for point in sweep_plan(w) for path in point["runs"]]


def sweep_plan_json(w):
    return shlex.quote(json.dumps(sweep_plan(w)))


def has_cnn_features(ds):
    """Whether the dataset has the 2014 release's CNN image features (visual variant `original`)."""
    entry = C(ds)["dataset"]
    return entry["format"] in ("synthetic", "mmrec") or "image_features" in entry


def model_result(ds, model):
    """What stands for `model` in the reports: its run on the main features, or when the dataset
    sweeps it its grid selection, which names the runs (one per seed) of the point chosen on validation."""
    if sweep.grid(C(ds), model) is not None:
        return f"results/{ds}/sweep/{model}.json"
    return run_metrics(ds, run_id(model, *main_parts(ds, model)))


def baseline_results(ds, model):
    """A baseline's rows in Table 1: a content baseline runs on the CNN features, as the paper's
    table did, where the dataset has them, and on the main run's features beside them."""
    cfg = C(ds)
    variant, fusion = main_parts(ds, model)
    rows = [model_result(ds, model)]
    if variant not in (None, "original") and has_cnn_features(ds):
        rows.insert(0, run_metrics(ds, run_id(model, "original", fusion)))
    return rows


def main_result(w):
    return model_result(w.ds, C(w.ds)["train"]["model"])


def chosen_runs(ds, model, variant, fusion):
    """`model`'s run on other features or with another fusion (the ablation), at the grid point chosen
    on validation when it is swept: read from rule `sweep_select`, a checkpoint, since these runs
    depend on what it chose."""
    cfg = C(ds)
    if sweep.grid(cfg, model) is None:
        return [run_id(model, variant, fusion)]
    selection = checkpoints.sweep_select.get(ds=ds, model=model).output.json
    chosen = json.loads(Path(selection).read_text())["chosen"]["settings"]
    return [run_id(model, variant, fusion, sweep.name(run)) for run in sweep.with_seeds(cfg, chosen)]


def config_json(w):
    return shlex.quote(json.dumps(C(w.ds), sort_keys=True))


def table_runs(w):
    """Table 1 of the paper: the baselines, then the main model, each at its chosen grid point."""
    cfg = C(w.ds)
    rows = [row for model in cfg["report"]["baselines"] for row in baseline_results(w.ds, model)]
    return rows + [model_result(w.ds, cfg["train"]["model"])]


def ablation_runs(w):
    """Table 2 of the paper: image features (with PID fusion), then fusions (with the main run's
    features), all at VLIF's chosen grid point when VLIF is swept."""
    cfg = C(w.ds)
    has_images = cfg["dataset"]["format"] != "mmrec" or "meta" in cfg["dataset"]
    variants = ["vlm_plain", "vlm_title"] if has_images else []
    if has_cnn_features(w.ds):
        variants.insert(0, "original")
    rows = [(variant, "pid") for variant in variants]
    rows += [(visual_variant(cfg), fusion) for fusion in FUSIONS if fusion != "pid"]
    return [run_metrics(w.ds, run) for variant, fusion in rows for run in chosen_runs(w.ds, "vlif", variant, fusion)]


def gallery_inputs(w):
    """The caption gallery's files: items, images manifest and the main VLM variant's captions (the
    title-guided ones when the main run uses CNN features)."""
    cfg = C(w.ds)
    variant = visual_variant(cfg)
    variant = variant if VARIANTS[variant].prompt is not None else "vlm_title"
    return {
        "item_table": f"results/{w.ds}/kcore/items.parquet",
        "manifest": f"results/{w.ds}/images/manifest.parquet",
        "captions": captions_file(w.ds, variant),
    }


def has_images(ds):
    entry = C(ds)["dataset"]
    return entry["format"] != "mmrec" or "meta" in entry


def table_histories(w):
    return [str(Path(path).with_name("history.json")) for path in _table_run_metrics(w)]


def _table_run_metrics(w):
    """The runs behind Table 1 (a sweep's chosen runs read from its selection, a checkpoint)."""
    paths = []
    for path in table_runs(w):
        if Path(path).parent.name == "sweep":
            model = Path(path).stem
            selection = checkpoints.sweep_select.get(ds=w.ds, model=model).output.json
            paths += json.loads(Path(selection).read_text())["chosen"]["runs"]
        else:
            paths.append(path)
    return paths


def training_figures(w):
    return [f"results/{w.ds}/report/training/{Path(path).parent.name}.png" for path in _table_run_metrics(w)]


def embedding_features(w):
    """The visual features the embeddings figure shows: CNN beside the main VLM variant's."""
    cfg = C(w.ds)
    panels = {}
    if has_cnn_features(w.ds):
        panels["original"] = f"results/{w.ds}/features/visual__original.npy"
    if has_images(w.ds):
        variant = visual_variant(cfg)
        variant = variant if VARIANTS[variant].prompt is not None else "vlm_title"
        panels[variant] = f"results/{w.ds}/features/visual__{variant}.npy"
    return panels


def embedding_flags(w, input):
    return " ".join(shlex.quote(f"{VARIANTS[name].label}={input[name]}") for name in embedding_features(w))


def benchmark_files(w):
    """The benchmark files of the jobs behind Table 1: each stage's, and each table run's training."""
    cfg = C(w.ds)
    base = f"results/{w.ds}/benchmarks"
    files = [f"{base}/graph_user_item.tsv", f"{base}/graph_user_user__k{cfg['graphs']['user_k']}.tsv"]
    if cfg["dataset"]["format"] != "mmrec":
        files += [f"{base}/ingest.tsv", f"{base}/kcore.tsv", f"{base}/encode_text.tsv"]
    variant = visual_variant(cfg)
    if VARIANTS[variant].prompt is not None:
        model, prompt, shards = slug(cfg["vlm"]["model"]), VARIANTS[variant].prompt, cfg["vlm"]["shards"]
        files += [f"{base}/caption_{model}__{prompt}__{k}of{shards}.tsv" for k in range(shards)]
        files.append(f"{base}/encode_captions_{variant}.tsv")
    runs = [Path(path).parent.name for path in _table_run_metrics(w)]
    graphs = {graph for run in runs if (graph := run_graph(w.ds, run))}
    return files + [f"{base}/graph_{Path(graph).stem}.tsv" for graph in sorted(graphs)] + [
        f"{base}/train_{run}.tsv" for run in runs
    ]


def run_graph(ds, run):
    """The item kNN graph file a run trains on, or None."""
    return train_inputs(SimpleNamespace(ds=ds, run=run)).get("item_knn")


def report_files(w):
    """Every file the HTML report shows for the dataset."""
    base = f"results/{w.ds}/report"
    files = [f"{base}/data.csv", f"{base}/degrees.png", f"{base}/validation_curves.png", f"{base}/table.csv",
             f"{base}/ablation.csv", f"{base}/results.png", f"{base}/cost.csv", f"{base}/cost.png",
             f"{base}/embeddings.png", *training_figures(w)]
    return files + ([f"{base}/captions.html"] if has_images(w.ds) else [])
