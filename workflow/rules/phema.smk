# Snapshots -> runs/<run>/phema/: every post-hoc EMA reconstruction a run needs, in one pass over its snapshots.


rule phema:
    input:
        trained="runs/{run}/trained.json",
    output:
        phema=directory("runs/{run}/phema"),
    log:
        "logs/phema/{run}.log",
    benchmark:
        "benchmarks/phema/{run}.tsv"
    params:
        targets=lambda wildcards: pipeline.phema_targets(config, wildcards.run),
    threads: 2
    resources:
        mem_mb=16000,
        runtime=240,
    conda:
        ENV
    script:
        "../scripts/phema.py"


rule phema_plot:
    input:
        trained="runs/{run}/trained.json",
    output:
        plot=report(
            "results/phema-profiles-{run}.png",
            caption="../report/phema_profiles.rst",
            category="Post-hoc EMA",
            labels={"run": "{run}"},
        ),
    log:
        "logs/phema_plot/{run}.log",
    params:
        targets=lambda wildcards: pipeline.phema_targets(config, wildcards.run),
    localrule: True
    conda:
        ENV
    script:
        "../scripts/phema_plot.py"
