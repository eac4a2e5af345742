"""Train and evaluate one model configuration: `results/{ds}/runs/{run}/`.

A run name encodes the model and, for content models, the visual features and the fusion
(`vlif__vlm_title__pid`, `freedom__original`, `lightgcn`); see `vlif_pipeline.config.run_id`.
"""

SHARED_TRAIN_KEYS = ("learning_rate", "batch_size", "embedding_dim", "n_layers", "reg_weight", "max_epochs", "patience")


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


rule train:
    output:
        metrics="results/{ds}/runs/{run}/metrics.json",
        history="results/{ds}/runs/{run}/history.json",
    input:
        unpack(train_inputs),
        code=code("training", "models"),
    params:
        model=lambda w: parse_run_id(w.run)["model"],
        json=train_params,
        optional=optional_inputs,
        device=lambda w: C(w.ds)["train"]["device"],
    threads: 8
    resources:
        gpu=lambda w: C(w.ds)["train"]["gpus"],
    log:
        "results/{ds}/logs/train_{run}.log",
    benchmark:
        "results/{ds}/benchmarks/train_{run}.tsv"
    conda:
        GPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} {STAGE} train --model {params.model}"
        " --kcore-dir results/{wildcards.ds}/kcore --user-item {input.user_item} {params.optional}"
        " --params-json {params.json} --device {params.device}"
        " --out-dir results/{wildcards.ds}/runs/{wildcards.run} > {log} 2>&1"
