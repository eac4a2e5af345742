"""Sentence-BERT features: item text, and captions as the visual modality."""


rule encode_text:
    output:
        "results/{ds}/features/text.npy",
    input:
        item_table="results/{ds}/kcore/items.parquet",
        code=code("encode-text"),
    wildcard_constraints:
        ds=datasets_where(raw_dumps),
    params:
        model=setting("text_encoder"),
        cache="results/cache/embeddings",
    threads: 8
    log:
        "results/{ds}/logs/encode_text.log",
    benchmark:
        "results/{ds}/benchmarks/encode_text.tsv"
    conda:
        CPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlif_pipeline encode-text --items {input.item_table}"
        " --model {params.model:q} --cache-dir {params.cache} --out {output} > {log} 2>&1"


rule encode_captions:
    output:
        "results/{ds}/features/visual__{variant}.npy",
    wildcard_constraints:
        variant="|".join(name for name, variant in VARIANTS.items() if variant.prompt),
    input:
        item_table="results/{ds}/kcore/items.parquet",
        captions=variant_captions,
        code=code("encode-text"),
    params:
        model=setting("text_encoder"),
        cache="results/cache/embeddings",
        title=title_flag,
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
