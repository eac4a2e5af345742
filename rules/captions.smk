"""Product images -> title-guided captions from a Qwen-VL model (sharded, resumable)."""


rule images:
    output:
        "results/{ds}/images/manifest.parquet",
    input:
        item_table="results/{ds}/kcore/items.parquet",
        meta=raw_file("meta"),
        code=code("images"),
    params:
        base_dir=raw_folder("meta"),
        cache="results/cache/images",
        opts=settings("images", "timeout", "retries", "max_bytes", "max_failed_fraction"),
        allow_local=local_images_allowed,
    threads: 4
    resources:
        # how fast, not what: a resource, so that changing it reruns nothing (params changes do)
        image_fetches=setting("images", "concurrency"),
    log:
        "results/{ds}/logs/images.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline images --items {input.item_table} --base-dir {params.base_dir:q}"
        " --cache-dir {params.cache} --out {output} --concurrency {resources.image_fetches}"
        " --timeout {params.opts[timeout]} --retries {params.opts[retries]}"
        " --max-bytes {params.opts[max_bytes]} --allow-local {params.allow_local}"
        " --max-failed-fraction {params.opts[max_failed_fraction]} > {log} 2>&1"


rule build_tiny_vlm:
    output:
        directory(TINY_VLM_DIR),
    input:
        code=code("build-tiny-vlm"),
    params:
        seed=config["seed"],
    log:
        "results/models/logs/build_tiny_vlm.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline build-tiny-vlm --out-dir {output} --seed {params.seed} > {log} 2>&1"


rule caption:
    output:
        "results/{ds}/captions/shards/{vlm}__{prompt}__{shard}of{n}.parquet",
    input:
        manifest="results/{ds}/images/manifest.parquet",
        item_table="results/{ds}/kcore/items.parquet",
        model=vlm_inputs,
        code=code("caption"),
    params:
        model=check_vlm,
        cache="results/cache/captions",
        # what the captions depend on (the prompt is in the file name); the batch size and GPU count
        # are resources, whose changes rerun nothing (params changes rerun the job and its dependants)
        opts=settings("vlm", "max_new_tokens", "device", "engine", "no_image_policy"),
    threads: 8
    resources:
        gpu=setting("vlm", "gpus"),
        vlm_batch_size=setting("vlm", "batch_size"),
        vlm_batch_pixels=setting("vlm", "batch_pixels"),
    log:
        "results/{ds}/logs/caption_{vlm}__{prompt}__{shard}of{n}.log",
    benchmark:
        "results/{ds}/benchmarks/caption_{vlm}__{prompt}__{shard}of{n}.tsv"
    conda:
        GPU_ENV
    shell:
        "OMP_NUM_THREADS={threads} python -m vlif_pipeline caption --manifest {input.manifest} --items {input.item_table}"
        " --model {params.model:q} --prompt {wildcards.prompt}"
        " --shard {wildcards.shard} --n-shards {wildcards.n} --cache-dir {params.cache}"
        " --batch-size {resources.vlm_batch_size} --batch-pixels {resources.vlm_batch_pixels}"
        " --max-new-tokens {params.opts[max_new_tokens]}"
        " --device {params.opts[device]} --engine {params.opts[engine]}"
        " --no-image-policy {params.opts[no_image_policy]} --out {output} > {log} 2>&1"


rule caption_gather:
    output:
        "results/{ds}/captions/{vlm}__{prompt}.parquet",
    input:
        shards=caption_shards,
        code=code("caption-gather"),
    log:
        "results/{ds}/logs/caption_gather_{vlm}__{prompt}.log",
    conda:
        CPU_ENV
    shell:
        "python -m vlif_pipeline caption-gather --shards {input.shards} --out {output} > {log} 2>&1"
