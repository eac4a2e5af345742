"""Train and evaluate one model configuration: `results/{ds}/runs/{run}/`.

A run name encodes the model and, for content models, the visual features and the fusion
(`vlif__vlm_title__pid`, `freedom__original`, `lightgcn`); see `vlif_pipeline.config.run_id`.
"""

rule train:
    output:
        metrics="results/{ds}/runs/{run}/metrics.json",
        history="results/{ds}/runs/{run}/history.json",
    input:
        unpack(train_inputs),
        code=code("train"),
    params:
        model=run_model,
        json=train_params,
        optional=input_flags(text="--text", visual="--visual", item_knn="--item-knn", user_user="--user-user"),
        device=setting("train", "device"),
    threads: 8
    resources:
        gpu=setting("train", "gpus"),
    log:
        "results/{ds}/logs/train_{run}.log",
    benchmark:
        "results/{ds}/benchmarks/train_{run}.tsv"
    conda:
        GPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlif_pipeline train --model {params.model}"
        " --kcore-dir results/{wildcards.ds}/kcore --user-item {input.user_item} {params.optional}"
        " --params-json {params.json} --device {params.device} --threads {threads}"
        " --out-dir results/{wildcards.ds}/runs/{wildcards.run} > {log} 2>&1"


rule recommend:
    output:
        "results/{ds}/recommendations.parquet",
    input:
        run=main_result,
        code=code("recommend"),
    params:
        k=setting("recommend", "k"),
    threads: 8
    log:
        "results/{ds}/logs/recommend.log",
    benchmark:
        "results/{ds}/benchmarks/recommend.tsv"
    conda:
        GPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlif_pipeline recommend --run {input.run} --k {params.k}"
        " --threads {threads} --out {output} > {log} 2>&1"
