# The data-specific detector and the reference floor (docs/metrics.md, "Data-specific detector"):
#   heldout:  the source's held-out split -> data/<name>/heldout.h5 (Fashion-MNIST: the 10k test images)
#   detector: images.h5 (training split) + heldout.h5 -> data/<name>/classifier.safetensors (+ .json identity)
#   floor:    held-out images, one seed block's count, scored like samples -> metrics/real-heldout/block<b>.json


rule heldout:
    output:
        images=f"{DATA}/heldout.h5",
    log:
        f"logs/heldout/{config['data']['name']}.log",
    benchmark:
        f"benchmarks/heldout/{config['data']['name']}.tsv"
    params:
        data=pipeline.prepare_params(config),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/heldout.py"


rule detector:
    input:
        images=f"{DATA}/images.h5",
        heldout=f"{DATA}/heldout.h5",
    output:
        classifier=f"{DATA}/classifier.safetensors",
        identity=report(f"{DATA}/classifier.json", caption="../report/classifier.rst", category="Detector"),
    log:
        f"logs/detector/{config['data']['name']}.log",
    benchmark:
        f"benchmarks/detector/{config['data']['name']}.tsv"
    params:
        settings=config["metrics"]["classifier"],
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/detector.py"


rule floor:
    input:
        unpack(lambda wildcards: REFERENCE_STATS),
        unpack(lambda wildcards: CLASSIFIER_INPUT),
        heldout=f"{DATA}/heldout.h5",
    output:
        metrics=f"metrics/{FLOOR_RUN}/block{{block}}.json",
    log:
        f"logs/floor/block{{block}}.log",
    benchmark:
        f"benchmarks/floor/block{{block}}.tsv"
    params:
        detectors=DETECTORS,
        images=config["sampling"]["images"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        ENV
    script:
        "../scripts/floor.py"
