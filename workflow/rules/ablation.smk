# The paper's own experiments (docs/ablation.md): configs A..G side by side -> results/ablation_table.csv,
# and each run's training dynamics (telemetry.jsonl) -> results/dynamics-<run>.png (EDM2 Fig. 15 layout).
#   snakemake --cores 2 results/ablation_table.csv --configfile config/ablation.yaml  (target first:
#   --configfile takes every following word as a config file)


ABLATION_RUNS = [r for r in pipeline.sampled_runs(config) if r in TRAINED]  # released runs: no recipe
TELEMETRY_RUNS = [r for r in ABLATION_RUNS if config["runs"][r].get("telemetry_nimg")]
ABLATION_METRICS = [
    f"metrics/{p.run}/{p.name}/block{b}.json" for p in POINTS if p.run in ABLATION_RUNS for b in BLOCKS
]


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
        metrics=ABLATION_METRICS,
        phema=[ancient(f"runs/{run}/phema") for run in ABLATION_RUNS],
        dynamics=[f"results/dynamics-{run}.png" for run in TELEMETRY_RUNS],
    output:
        table=report("results/ablation_table.csv", caption="../report/ablation_table.rst", category="Results"),
    log:
        "logs/ablation_table/ablation_table.log",
    benchmark:
        "benchmarks/ablation_table/ablation_table.tsv"
    params:
        runs={run: config["runs"][run] for run in ABLATION_RUNS},
        phema_dirs={run: f"runs/{run}/phema" for run in ABLATION_RUNS},
        detectors=config["metrics"]["detectors"],
        unguided=[g for g, s in config["guidance"].items() if s.get("guide") is None and s["w"] == 1],
    localrule: True
    conda:
        ENV
    script:
        "../scripts/ablation_table.py"
