"""Reports: metrics.json of the main run, the paper-style comparison and ablation tables."""


rule report_metrics:
    output:
        "results/{ds}/metrics.json",
    input:
        unpack(visual_inputs),
        run=main_result,
        stats="results/{ds}/kcore/stats.json",
        ingest="results/{ds}/ingest_report.json",
        code=code("report"),
    params:
        config=config_json,
        variant=main_variant,
        visual=input_flags(captions="--captions", manifest="--manifest", cnn_report="--cnn-report"),
    log:
        "results/{ds}/logs/report_metrics.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report metrics --run {input.run} --stats {input.stats} --ingest-report {input.ingest}"
        " --variant {params.variant} {params.visual} --config-json {params.config} --dataset {wildcards.ds}"
        " --out {output} > {log} 2>&1"


rule report_table:
    output:
        "results/{ds}/table.md",
    input:
        unpack(visual_inputs),
        runs=table_runs,
        code=code("report"),
    params:
        variant=main_variant,
        visual=input_flags(captions="--captions", manifest="--manifest", cnn_report="--cnn-report"),
    log:
        "results/{ds}/logs/report_table.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report table --runs {input.runs} --variant {params.variant} {params.visual}"
        " --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule report_ablation:
    output:
        "results/{ds}/ablation.md",
    input:
        runs=ablation_runs,
        code=code("report"),
    log:
        "results/{ds}/logs/report_ablation.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report ablation --runs {input.runs} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


checkpoint sweep_select:
    output:
        json="results/{ds}/sweep/{model}.json",
        md="results/{ds}/sweep/{model}.md",
    input:
        runs=sweep_inputs,
        code=code("report"),
    wildcard_constraints:
        model="|".join(MODELS),
    params:
        plan=sweep_plan_json,
    log:
        "results/{ds}/logs/sweep_{model}.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report sweep --plan {params.plan} --model {wildcards.model} --dataset {wildcards.ds}"
        " --out {output.json} --out-md {output.md} > {log} 2>&1"


rule report_paper:
    output:
        "results/{ds}/paper.md",
    input:
        runs=table_runs,
        ablation_runs=ablation_runs,
        code=code("report"),
    params:
        published=setting("dataset", "published"),
    log:
        "results/{ds}/logs/report_paper.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report paper --runs {input.runs} --ablation-runs {input.ablation_runs}"
        " --published {params.published} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


# The HTML report: `snakemake --cores 2 results/demo/report/index.md` builds every figure, then
# `snakemake --report results/demo/report.html results/demo/report/index.md` gathers them.


rule report_data:
    output:
        facts=report("results/{ds}/report/data.csv", caption="report/data.rst", category="1 Data"),
        degrees=report("results/{ds}/report/degrees.png", caption="report/degrees.rst", category="1 Data"),
    input:
        ingest="results/{ds}/ingest_report.json",
        stats="results/{ds}/kcore/stats.json",
        interactions="results/{ds}/kcore/interactions.parquet",
        code=code("report"),
    log:
        "results/{ds}/logs/report_data.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report data --ingest {input.ingest} --stats {input.stats}"
        " --interactions {input.interactions} --dataset {wildcards.ds} --out {output.facts}"
        " --out-png {output.degrees} > {log} 2>&1"


rule report_gallery:
    output:
        report("results/{ds}/report/captions.html", caption="report/captions.rst", category="2 Captions"),
    input:
        unpack(gallery_inputs),
        code=code("report"),
    params:
        seed=setting("seed"),
    log:
        "results/{ds}/logs/report_gallery.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report gallery --items {input.item_table} --manifest {input.manifest}"
        " --captions {input.captions} --seed {params.seed} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule report_training:
    output:
        report("results/{ds}/report/training/{run}.png", caption="report/training.rst", category="3 Training"),
    input:
        history="results/{ds}/runs/{run}/history.json",
        metrics="results/{ds}/runs/{run}/metrics.json",
        code=code("report"),
    log:
        "results/{ds}/logs/report_training_{run}.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report training --history {input.history:q} --metrics {input.metrics:q}"
        " --dataset {wildcards.ds} --out {output:q} > {log:q} 2>&1"


rule report_curves:
    output:
        report("results/{ds}/report/validation_curves.png", caption="report/curves.rst", category="3 Training"),
    input:
        histories=table_histories,
        code=code("report"),
    log:
        "results/{ds}/logs/report_curves.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report curves --histories {input.histories:q} --dataset {wildcards.ds}"
        " --out {output} > {log} 2>&1"


rule report_results:
    output:
        table=report("results/{ds}/report/table.csv", caption="report/results.rst", category="4 Results"),
        ablation=report("results/{ds}/report/ablation.csv", caption="report/results.rst", category="4 Results"),
        chart=report("results/{ds}/report/results.png", caption="report/results.rst", category="4 Results"),
    input:
        runs=table_runs,
        ablation_runs=ablation_runs,
        code=code("report"),
    log:
        "results/{ds}/logs/report_results.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report results --runs {input.runs:q} --ablation-runs {input.ablation_runs:q}"
        " --dataset {wildcards.ds} --out {output.table} --out-ablation {output.ablation}"
        " --out-png {output.chart} > {log} 2>&1"


rule report_cost:
    output:
        table=report("results/{ds}/report/cost.csv", caption="report/cost.rst", category="5 Cost"),
        chart=report("results/{ds}/report/cost.png", caption="report/cost.rst", category="5 Cost"),
    input:
        benchmarks=benchmark_files,
        code=code("report"),
    log:
        "results/{ds}/logs/report_cost.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report cost --benchmarks {input.benchmarks:q} --dataset {wildcards.ds}"
        " --out {output.table} --out-png {output.chart} > {log} 2>&1"


rule report_embeddings:
    output:
        report("results/{ds}/report/embeddings.png", caption="report/embeddings.rst", category="6 Embeddings"),
    input:
        unpack(embedding_features),
        item_table="results/{ds}/kcore/items.parquet",
        code=code("report"),
    params:
        features=embedding_flags,
    log:
        "results/{ds}/logs/report_embeddings.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report embeddings --features {params.features} --items {input.item_table}"
        " --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule report_index:
    output:
        "results/{ds}/report/index.md",
    input:
        files=report_files,
        code=code("report"),
    log:
        "results/{ds}/logs/report_index.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report index --files {input.files:q} --dataset {wildcards.ds} --out {output} > {log} 2>&1"
