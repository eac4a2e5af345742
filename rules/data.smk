"""Raw files -> clean interactions and items -> k-core, ids and split; original CNN features."""


rule demo:
    output:
        reviews="results/{ds}/raw/reviews.json.gz",
        meta="results/{ds}/raw/meta.json.gz",
        image_features="results/{ds}/raw/image_features.b",
        truth="results/{ds}/raw/truth.json",
        images=directory("results/{ds}/raw/images"),
    input:
        code=code("amazon/demo.py"),
    params:
        seed=lambda w: C(w.ds)["seed"],
        n_users=lambda w: C(w.ds)["dataset"]["synthetic"]["n_users"],
        n_items=lambda w: C(w.ds)["dataset"]["synthetic"]["n_items"],
        image_size=lambda w: C(w.ds)["dataset"]["synthetic"]["image_size"],
    log:
        "results/{ds}/logs/demo.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline demo --out-dir results/{wildcards.ds}/raw --seed {params.seed}"
        " --n-users {params.n_users} --n-items {params.n_items} --image-size {params.image_size}"
        " > {log} 2>&1"


rule download:
    output:
        "results/{ds}/raw/{key}/{filename}",
    input:
        code=code("amazon/download.py"),
    params:
        url=lambda w: C(w.ds)["dataset"][w.key],
    log:
        "results/{ds}/logs/download_{key}_{filename}.log",
    retries: 2
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline download --url {params.url:q} --out {output} > {log} 2>&1"


rule ingest:
    output:
        interactions="results/{ds}/interactions.parquet",
        item_table="results/{ds}/items.parquet",
        report="results/{ds}/ingest_report.json",
    input:
        reviews=lambda w: raw(w.ds, "reviews"),
        meta=lambda w: raw(w.ds, "meta"),
        code=code("amazon/ingest.py", "amazon/readers.py", "amazon/text_clean.py", "amazon/formats.py", "amazon/items.py", "amazon/meta.py", "data/dedup.py"),
    params:
        format=lambda w: {"synthetic": "amazon2014"}.get(C(w.ds)["dataset"]["format"], C(w.ds)["dataset"]["format"]),
        max_bad=lambda w: C(w.ds)["ingest"]["max_bad_fraction"],
    threads: 4
    log:
        "results/{ds}/logs/ingest.log",
    benchmark:
        "results/{ds}/benchmarks/ingest.tsv"
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline ingest --format {params.format} --reviews {input.reviews:q} --meta {input.meta:q}"
        " --out-interactions {output.interactions} --out-items {output.item_table}"
        " --report {output.report} --max-bad-fraction {params.max_bad} --workers {threads} > {log} 2>&1"


rule kcore:
    output:
        **kcore_files("{ds}"),
    input:
        unpack(kcore_inputs),
        code=code("data/kcore.py", "data/split.py", "data/dedup.py", "data/mmrec.py", "amazon/items.py"),
    params:
        args=kcore_args,
    log:
        "results/{ds}/logs/kcore.log",
    benchmark:
        "results/{ds}/benchmarks/kcore.tsv"
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline kcore {params.args} --out-dir results/{wildcards.ds}/kcore > {log} 2>&1"


rule original_features:
    output:
        "results/{ds}/features/visual__original.npy",
    input:
        unpack(original_feature_inputs),
        code=code("data/image_features.py", "data/mmrec.py"),
    params:
        args=original_feature_args,
    log:
        "results/{ds}/logs/original_features.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline {params.args} --out {output} > {log} 2>&1"
