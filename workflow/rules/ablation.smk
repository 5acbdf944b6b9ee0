# The paper's own experiments (docs/ablation.md): configs A..G side by side -> results/ablation_table.csv,
# and each run's training dynamics (telemetry.jsonl) -> results/dynamics-<run>.png (EDM2 Fig. 15 layout).
#   snakemake --cores 2 results/ablation_table.csv --configfile config/ablation.yaml  (target first:
#   --configfile takes every following word as a config file)


def ablation_runs():
    """Sampled runs this workflow trains (released runs have no recipe or telemetry)."""
    return [r for r in pipeline.sampled_runs(config) if r in TRAINED]


def telemetry_runs():
    return [r for r in ablation_runs() if config["runs"][r].get("telemetry_nimg")]


def ablation_metrics(wildcards):
    runs = set(ablation_runs())
    return [f"metrics/{p.run}/{p.name}/block{b}.json" for p in POINTS if p.run in runs for b in BLOCKS]


rule dynamics:
    input:
        trained="runs/{run}/trained.json",
    output:
        plot=report(
            "results/dynamics-{run}.png",
            caption="../report/dynamics.rst",
            category="Training dynamics",
            labels={"run": "{run}"},
        ),
    log:
        "logs/dynamics/{run}.log",
    benchmark:
        "benchmarks/dynamics/{run}.tsv"
    params:
        title=lambda wildcards: (
            f"{wildcards.run} (CONFIG {config['runs'][wildcards.run].get('ablation') or 'G'}): "
            "EMA solid, raw dotted"
        ),
    localrule: True
    conda:
        ENV
    script:
        "../scripts/dynamics.py"


rule ablation_table:
    input:
        metrics=ablation_metrics,
        phema=[ancient(f"runs/{run}/phema") for run in ablation_runs()],
        dynamics=[f"results/dynamics-{run}.png" for run in telemetry_runs()],
    output:
        table=report("results/ablation_table.csv", caption="../report/ablation_table.rst", category="Results"),
    log:
        "logs/ablation_table/ablation_table.log",
    benchmark:
        "benchmarks/ablation_table/ablation_table.tsv"
    params:
        runs={run: config["runs"][run] for run in ablation_runs()},
        phema_dirs={run: f"runs/{run}/phema" for run in ablation_runs()},
        detectors=config["metrics"]["detectors"],
        unguided=[g for g, s in config["guidance"].items() if s.get("guide") is None and s["w"] == 1],
    localrule: True
    conda:
        ENV
    script:
        "../scripts/ablation_table.py"
