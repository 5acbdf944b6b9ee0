# Samples + reference statistics -> metrics/<run>/<point>/block<b>.json (FID, FD-DINOv2, detector identities).
# `metrics.batch` and `metrics.download` are read at run time (no params: editing them reruns nothing).


rule score:
    input:
        unpack(lambda wildcards: REFERENCE_STATS),
        unpack(lambda wildcards: CLASSIFIER_INPUT),
        samples="samples/{run}/{nimg}-{sigma_rel}-{guidance}/block{block}.h5",
    output:
        metrics="metrics/{run}/{nimg}-{sigma_rel}-{guidance}/block{block}.json",
    log:
        "logs/score/{run}/{nimg}-{sigma_rel}-{guidance}-block{block}.log",
    benchmark:
        "benchmarks/score/{run}/{nimg}-{sigma_rel}-{guidance}-block{block}.tsv"
    params:
        detectors=DETECTORS,
        point=lambda wildcards: pipeline.point_record(config, point(wildcards), int(wildcards.block)),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        ENV
    script:
        "../scripts/score.py"
