"""Reports: metrics.json of the main run, the paper-style comparison and ablation tables."""


rule report_metrics:
    output:
        "results/{ds}/metrics.json",
    input:
        run=main_run_metrics,
        stats="results/{ds}/kcore/stats.json",
        ingest="results/{ds}/ingest_report.json",
        code=code("report"),
    params:
        config=config_json,
    log:
        "results/{ds}/logs/report_metrics.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report metrics --run {input.run} --stats {input.stats} --ingest-report {input.ingest}"
        " --config-json {params.config} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule report_table:
    output:
        "results/{ds}/table.md",
    input:
        runs=table_runs,
        code=code("report"),
    log:
        "results/{ds}/logs/report_table.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report table --runs {input.runs} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


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
