"""Graphs from the training split and item features: user-item, item-item kNN, user-user."""


rule graph_user_item:
    output:
        "results/{ds}/graphs/user_item.npz",
    input:
        **kcore_files("{ds}"),
        code=code("graph-user-item"),
    log:
        "results/{ds}/logs/graph_user_item.log",
    benchmark:
        "results/{ds}/benchmarks/graph_user_item.tsv"
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline graph-user-item --kcore-dir results/{wildcards.ds}/kcore --out {output} > {log} 2>&1"


rule graph_item_knn:
    output:
        "results/{ds}/graphs/item_knn__{variant}__k{k}__w{weight}.npz",
    input:
        visual="results/{ds}/features/visual__{variant}.npy",
        text="results/{ds}/features/text.npy",
        code=code("graph-item-knn"),
    params:
        weights=knn_weights,
        self_loop=setting("graphs", "self_loop"),
    threads: 8
    log:
        "results/{ds}/logs/graph_item_knn__{variant}__k{k}__w{weight}.log",
    benchmark:
        "results/{ds}/benchmarks/graph_item_knn__{variant}__k{k}__w{weight}.tsv"
    conda:
        CPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlif_pipeline graph-item-knn --features {input.visual} {input.text}"
        " --weights {params.weights} --k {wildcards.k}"
        " --self-loop {params.self_loop} --out {output} > {log} 2>&1"


rule graph_user_user:
    output:
        "results/{ds}/graphs/user_user__k{k}.npz",
    input:
        **kcore_files("{ds}"),
        code=code("graph-user-user"),
    threads: 2
    log:
        "results/{ds}/logs/graph_user_user__k{k}.log",
    benchmark:
        "results/{ds}/benchmarks/graph_user_user__k{k}.tsv"
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline graph-user-user --kcore-dir results/{wildcards.ds}/kcore --k {wildcards.k}"
        " --out {output} > {log} 2>&1"
