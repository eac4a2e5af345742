"""Sentence-BERT features: item text, and captions as the visual modality."""


rule encode_text:
    output:
        "results/{ds}/features/text.npy",
    input:
        unpack(text_feature_inputs),
        code=code("text", "data/mmrec.py"),
    params:
        args=text_feature_args,
    threads: 8
    log:
        "results/{ds}/logs/encode_text.log",
    benchmark:
        "results/{ds}/benchmarks/encode_text.tsv"
    conda:
        CPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlif_pipeline {params.args} --out {output} > {log} 2>&1"


rule encode_captions:
    output:
        "results/{ds}/features/visual__{variant}.npy",
    wildcard_constraints:
        variant=r"vlm_title|vlm_plain",
    input:
        item_table="results/{ds}/kcore/items.parquet",
        captions=lambda w: f"results/{w.ds}/captions/{slug(C(w.ds)['vlm']['model'])}__{VARIANT_PROMPT[w.variant]}.parquet",
        code=code("text"),
    params:
        model=lambda w: C(w.ds)["text_encoder"],
        cache="results/cache/embeddings",
        title=lambda w: "--prepend-title" if C(w.ds)["captions"]["prepend_title"] else "--no-prepend-title",
    threads: 8
    log:
        "results/{ds}/logs/encode_captions_{variant}.log",
    benchmark:
        "results/{ds}/benchmarks/encode_captions_{variant}.tsv"
    conda:
        CPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlif_pipeline encode-text --items {input.item_table} --captions {input.captions}"
        " {params.title} --model {params.model:q} --cache-dir {params.cache} --out {output} > {log} 2>&1"
