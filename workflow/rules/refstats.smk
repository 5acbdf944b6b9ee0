# images.h5 -> data/<name>/ref-<detector>.npz: feature statistics of the real images, one file per detector.


rule refstats:
    input:
        images=f"{DATA}/images.h5",
    output:
        stats=f"{DATA}/ref-{{detector}}.npz",
    log:
        f"logs/refstats/{config['data']['name']}-{{detector}}.log",
    benchmark:
        f"benchmarks/refstats/{config['data']['name']}-{{detector}}.tsv"
    params:
        metrics=config["metrics"],
    threads: 2
    resources:
        mem_mb=16000,
        runtime=720,
    script:
        "../scripts/refstats.py"
