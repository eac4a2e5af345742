"""Reports: metrics.json of the main run, the paper-style comparison and ablation tables."""


rule report_metrics:
    output:
        "results/{ds}/metrics.json",
    input:
        run=lambda w: f"results/{w.ds}/runs/{main_run(C(w.ds))}/metrics.json",
        stats="results/{ds}/kcore/stats.json",
        code=code("report", "config.py"),
    params:
        config=lambda w: quoted_json(C(w.ds)),
        ingest=lambda w: f"results/{w.ds}/ingest_report.json",
    log:
        "results/{ds}/logs/report_metrics.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report metrics --run {input.run} --stats {input.stats} --ingest-report {params.ingest}"
        " --config-json {params.config} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule report_table:
    output:
        "results/{ds}/table.md",
    input:
        runs=lambda w: table_runs(w.ds),
        code=code("report", "config.py"),
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
        runs=lambda w: ablation_runs(w.ds),
        code=code("report", "config.py"),
    log:
        "results/{ds}/logs/report_ablation.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline report ablation --runs {input.runs} --dataset {wildcards.ds} --out {output} > {log} 2>&1"
