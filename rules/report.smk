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
