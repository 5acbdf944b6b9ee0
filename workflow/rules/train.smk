# Training: runs/<run>/training.yaml (the engine's config) -> snapshots + checkpoints -> runs/<run>/trained.json.
# Snapshots and checkpoints are not rule outputs on purpose: Snakemake deletes the outputs of a job before
# rerunning it, and a rerun (retry, requeue, manual restart) must resume from them. `identity` is the hash of
# every key that changes what training computes (docs/training.md): an edit shows up in `snakemake -n`, and
# the run then stops before training with the changed keys. Runtime keys (batch_gpu, checkpoint and status
# intervals) are read from the config when training.yaml is written; editing them reruns nothing.
# On preemption the ranks checkpoint and exit 75 (after `scontrol requeue` under SLURM); `retries` resume
# such runs; a deterministic failure is not trained again by a retry (edm2lib.pipeline.steps.train).
# A forced train job (`--forcerun runs/<run>/trained.json`) of a run whose checkpoints have another identity
# trains afresh: the Snakefile's `onstart` (main process only, before any job) leaves runs/<run>/fresh.json,
# and the job moves the old state into runs/<run>/stale-<identity>/ first (docs/pipeline.md: Starting a run
# afresh). A forced job of the same identity resumes, like any other.


rule train_config:
    output:
        config="runs/{run}/training.yaml",
    log:
        "logs/train_config/{run}.log",
    params:
        run=lambda wildcards: pipeline.train_params(config, wildcards.run),
        data=TRAINING_DATA,
        identity=lambda wildcards: IDENTITY[wildcards.run],
    localrule: True
    conda:
        ENV
    script:
        "../scripts/train_config.py"


rule train:
    input:
        config="runs/{run}/training.yaml",
        data=TRAINING_DATA,
    output:
        trained="runs/{run}/trained.json",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    params:
        launch=launcher,
        identity=lambda wildcards: IDENTITY[wildcards.run],
    threads: 2
    retries: 3
    resources:
        mem_mb=8000,
        runtime=1440,
        attempt=lambda wildcards, attempt: attempt,
    conda:
        ENV
    script:
        "../scripts/train.py"
