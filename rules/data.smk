"""Raw files -> clean interactions and items -> k-core, ids and split; or an MMRec folder as it is."""


rule demo:
    output:
        reviews="results/{ds}/raw/reviews.json.gz",
        meta="results/{ds}/raw/meta.json.gz",
        image_features="results/{ds}/raw/image_features.b",
        truth="results/{ds}/raw/truth.json",
        images=directory("results/{ds}/raw/images"),
    input:
        code=code("demo"),
    params:
        seed=setting("seed"),
        n_users=setting("dataset", "synthetic", "n_users"),
        n_items=setting("dataset", "synthetic", "n_items"),
        image_size=setting("dataset", "synthetic", "image_size"),
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
        code=code("download"),
    params:
        url=download_url,
    log:
        "results/{ds}/logs/download_{key}_{filename}.log",
    retries: 2
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline download --url {params.url:q} --out {output:q} > {log} 2>&1"


rule ingest:
    output:
        interactions="results/{ds}/interactions.parquet",
        item_table="results/{ds}/items.parquet",
        report="results/{ds}/ingest_report.json",
    input:
        reviews=raw_file("reviews"),
        meta=raw_file("meta"),
        code=code("ingest"),
    params:
        format=ingest_format,
        max_bad=setting("ingest", "max_bad_fraction"),
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
        interactions="results/{ds}/interactions.parquet",
        item_table="results/{ds}/items.parquet",
        code=code("kcore"),
    wildcard_constraints:
        ds=datasets_where(raw_dumps),
    params:
        k=setting("kcore"),
        split=setting("split"),
        seed=setting("seed"),
        missing_meta=setting("missing_meta"),
    log:
        "results/{ds}/logs/kcore.log",
    benchmark:
        "results/{ds}/benchmarks/kcore.tsv"
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline kcore --interactions {input.interactions} --items {input.item_table}"
        " --k {params.k} --split {params.split} --seed {params.seed} --missing-meta {params.missing_meta}"
        " --out-dir results/{wildcards.ds}/kcore > {log} 2>&1"


rule mmrec_import:
    output:
        **kcore_files("{ds}"),
        report="results/{ds}/ingest_report.json",
    input:
        unpack(mmrec_files),
        code=code("mmrec-import"),
    wildcard_constraints:
        ds=datasets_where(mmrec_folder),
    params:
        meta=input_flags(meta="--meta"),
        meta_format=setting("dataset", "meta_format"),
        max_bad=setting("ingest", "max_bad_fraction"),
    log:
        "results/{ds}/logs/mmrec_import.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline mmrec-import --inter {input.inter:q} {params.meta} --meta-format {params.meta_format}"
        " --max-bad-fraction {params.max_bad} --out-dir results/{wildcards.ds}/kcore --report {output.report}"
        " > {log} 2>&1"


ruleorder: original_features > mmrec_features  # an MMRec folder given image_features: joined on asin


rule original_features:
    output:
        features="results/{ds}/features/visual__original.npy",
        report="results/{ds}/features/visual__original.report.json",
    input:
        features=raw_file("image_features"),
        item_table="results/{ds}/kcore/items.parquet",
        code=code("original-features"),
    wildcard_constraints:
        ds=datasets_where(cnn_feature_file),
    log:
        "results/{ds}/logs/original_features.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline original-features --features {input.features:q} --items {input.item_table}"
        " --report {output.report} --out {output.features} > {log} 2>&1"


rule mmrec_features:
    output:
        "results/{ds}/features/{feature}.npy",
    input:
        source=mmrec_feature_file,
        stats="results/{ds}/kcore/stats.json",
        code=code("mmrec-features"),
    wildcard_constraints:
        ds=datasets_where(mmrec_folder),
        feature="|".join(MMREC_FEATURES),
    log:
        "results/{ds}/logs/mmrec_features_{feature}.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline mmrec-features --source {input.source:q} --stats {input.stats}"
        " --out {output} > {log} 2>&1"
