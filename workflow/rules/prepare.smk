# Raw images -> data/<name>/images.h5 (uint8, labels, class names).


rule prepare:
    output:
        images=f"{DATA}/images.h5",
    log:
        f"logs/prepare/{config['data']['name']}.log",
    benchmark:
        f"benchmarks/prepare/{config['data']['name']}.tsv"
    params:
        data=pipeline.prepare_params(config),
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    script:
        "../scripts/prepare.py"
