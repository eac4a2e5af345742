"""Reports: metrics.json of the main run, the paper-style comparison and ablation tables."""


def table_runs(ds):
    cfg = C(ds)
    variant = visual_variant(cfg)
    baselines = [run_id(m, variant) for m in cfg["report"]["baselines"]]
    return [f"results/{ds}/runs/{r}/metrics.json" for r in baselines + [main_run(cfg)]]


def ablation_runs(ds):
    """Table 2 of the paper: image features (with PID fusion), then fusions (with title captions)."""
    entry = C(ds)["dataset"]
    variants = ["vlm_plain", "vlm_title"]
    if entry["format"] == "synthetic" or "image_features" in entry:
        variants.insert(0, "original")
    runs = [run_id("vlif", v, "pid") for v in variants]
    runs += [run_id("vlif", "vlm_title", f) for f in ("pooling", "concat", "weighted_concat")]
    return [f"results/{ds}/runs/{r}/metrics.json" for r in runs]


rule report_metrics:
    output:
        "results/{ds}/metrics.json",
    input:
        run=lambda w: f"results/{w.ds}/runs/{main_run(C(w.ds))}/metrics.json",
        stats="results/{ds}/kcore/stats.json",
        code=code("report"),
    params:
        config=lambda w: quoted_json(C(w.ds)),
        ingest=lambda w: f"results/{w.ds}/ingest_report.json",
    log:
        "results/{ds}/logs/report_metrics.log",
    conda:
        CPU_ENV
    shell:
        "{STAGE} report metrics --run {input.run} --stats {input.stats} --ingest-report {params.ingest}"
        " --config-json {params.config} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule report_table:
    output:
        "results/{ds}/table.md",
    input:
        runs=lambda w: table_runs(w.ds),
        code=code("report"),
    log:
        "results/{ds}/logs/report_table.log",
    conda:
        CPU_ENV
    shell:
        "{STAGE} report table --runs {input.runs} --dataset {wildcards.ds} --out {output} > {log} 2>&1"


rule report_ablation:
    output:
        "results/{ds}/ablation.md",
    input:
        runs=lambda w: ablation_runs(w.ds),
        code=code("report"),
    log:
        "results/{ds}/logs/report_ablation.log",
    conda:
        CPU_ENV
    shell:
        "{STAGE} report ablation --runs {input.runs} --dataset {wildcards.ds} --out {output} > {log} 2>&1"
