# Samples + reference statistics -> metrics/<run>/<point>/block<b>.json (FID, FD-DINOv2, detector identities).


rule score:
    input:
        unpack(reference_stats),
        samples="samples/{run}/{nimg}-{sigma_rel}-{guidance}/block{block}.h5",
    output:
        metrics="metrics/{run}/{nimg}-{sigma_rel}-{guidance}/block{block}.json",
    log:
        "logs/score/{run}/{nimg}-{sigma_rel}-{guidance}-block{block}.log",
    benchmark:
        "benchmarks/score/{run}/{nimg}-{sigma_rel}-{guidance}-block{block}.tsv"
    params:
        metrics=config["metrics"],
        point=lambda wildcards: pipeline.point_record(config, point(wildcards), int(wildcards.block)),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    script:
        "../scripts/score.py"
