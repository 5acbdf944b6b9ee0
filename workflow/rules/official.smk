# NVIDIA's released files -> the layouts training + reconstruction write (docs/official.md): released
# post-hoc reconstructions -> runs/<run>/phema/ (source: official), raw EMA snapshots -> runs/<run>/snapshots/
# (source: official-raw, then the normal phema rule), published reference statistics -> data/<name>/ref-*.npz
# (data.source: official). Each rule exists only when the config uses it, so other configs are unchanged.
# Params carry what the outputs depend on; where the files come from (`official`: local folder, download
# folder and switch, mirror URL) does not change them (checksummed), so the scripts read it from the config.
if POSTHOC_RUNS:

    rule official_posthoc:
        output:
            phema=directory("runs/{run}/phema"),
            trained="runs/{run}/trained.json",
        wildcard_constraints:
            run=_one_of(POSTHOC_RUNS),
        log:
            "logs/official_posthoc/{run}.log",
        benchmark:
            "benchmarks/official_posthoc/{run}.tsv"
        params:
            run=lambda wildcards: config["runs"][wildcards.run],
            targets=lambda wildcards: pipeline.phema_targets(config, wildcards.run),
        threads: 1
        resources:
            mem_mb=8000,
            runtime=240,
        conda:
            ENV
        script:
            "../scripts/official_posthoc.py"

    ruleorder: official_posthoc > phema
    ruleorder: official_posthoc > train


if RAW_RUNS:

    rule official_raw:
        output:
            trained="runs/{run}/trained.json",
        wildcard_constraints:
            run=_one_of(RAW_RUNS),
        log:
            "logs/official_raw/{run}.log",
        benchmark:
            "benchmarks/official_raw/{run}.tsv"
        params:
            run=lambda wildcards: config["runs"][wildcards.run],
            snapshots=lambda wildcards: f"runs/{wildcards.run}/snapshots",
        threads: 1
        resources:
            mem_mb=8000,
            runtime=1440,
        conda:
            ENV
        script:
            "../scripts/official_raw.py"

    ruleorder: official_raw > train


if config["data"]["source"] == "official":

    rule official_refs:
        output:
            **{d: f"{DATA}/ref-{d}.npz" for d in config["metrics"]["detectors"]},
        log:
            f"logs/official_refs/{config['data']['name']}.log",
        params:
            refs=config["data"].get("refs") or config["data"]["name"],
            resolution=config["data"]["resolution"],
            detectors=pipeline.detector_settings(config, config["metrics"]["detectors"]),
        threads: 2
        resources:
            mem_mb=16000,
            runtime=60,
        conda:
            ENV
        script:
            "../scripts/official_refs.py"

    ruleorder: official_refs > refstats


rule official_plot:
    input:
        table="results/fid_table.csv",
    output:
        plot=report("results/ours_vs_paper.png", caption="../report/ours_vs_paper.rst", category="Results"),
    log:
        "logs/official_plot/plot.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/official_plot.py"
