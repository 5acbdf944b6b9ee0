# images.h5 -> data/<name>/ref-<detector>.npz: feature statistics of the real images, one file per detector.
# `metrics.batch` and `metrics.download` only change speed or where weights come from: read at run time.


rule refstats:
    input:
        unpack(lambda wildcards: CLASSIFIER_INPUT if wildcards.detector == "classifier" else {}),
        images=f"{DATA}/images.h5",
    output:
        stats=f"{DATA}/ref-{{detector}}.npz",
    log:
        f"logs/refstats/{config['data']['name']}-{{detector}}.log",
    benchmark:
        f"benchmarks/refstats/{config['data']['name']}-{{detector}}.tsv"
    params:
        detector=lambda wildcards: pipeline.detector_settings(config, [wildcards.detector]),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=720,
    conda:
        ENV
    script:
        "../scripts/refstats.py"
