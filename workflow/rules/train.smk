# Training: runs/<run>/training.yaml (the engine's config) -> snapshots + checkpoints -> runs/<run>/trained.json.
# Snapshots and checkpoints are not rule outputs on purpose: Snakemake deletes the outputs of a job before
# rerunning it, and a rerun (retry, requeue, manual restart) must resume from them. On preemption the ranks
# checkpoint and exit 75 (after `scontrol requeue` under SLURM); `retries` covers jobs that cannot requeue.


rule train_config:
    output:
        config="runs/{run}/training.yaml",
    log:
        "logs/train_config/{run}.log",
    params:
        run=lambda wildcards: config["runs"][wildcards.run],
        data=training_data,
    localrule: True
    script:
        "../scripts/train_config.py"


rule train:
    input:
        config="runs/{run}/training.yaml",
        data=training_data,
    output:
        trained="runs/{run}/trained.json",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    params:
        launch=launcher,
    threads: 2
    retries: 3
    resources:
        mem_mb=8000,
        runtime=1440,
    shell:
        "(${{SLURM_JOB_ID:+{params.launch}}} python -m edm2lib.training --config {input.config}"
        " && python -m edm2lib.pipeline.steps trained {input.config} {output.trained}) >> {log} 2>&1"
