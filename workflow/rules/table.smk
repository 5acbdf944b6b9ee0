# All metrics (+ the floor) -> results/fid_table.csv and results/fid_vs_sigma_rel.png; samples -> grids by
# class (all annotated in `snakemake --report`).


rule table:
    input:
        metrics=all_metrics,
        floor=all_floor,
    output:
        table=report("results/fid_table.csv", caption="../report/fid_table.rst", category="Results"),
        plot=report("results/fid_vs_sigma_rel.png", caption="../report/fid_vs_sigma_rel.rst", category="Results"),
    log:
        "logs/table/table.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/table.py"


rule class_grid:
    input:
        samples="samples/{run}/{nimg}-{sigma_rel}-{guidance}/block0.h5",
        images=f"{DATA}/images.h5",
    output:
        grid=report(
            "results/grids/{run}/{nimg}-{sigma_rel}-{guidance}.png",
            caption="../report/class_grid.rst",
            category="Samples by class",
            subcategory="{run}",
            labels={"nimg": "{nimg}", "sigma_rel": "{sigma_rel}", "guidance": "{guidance}"},
        ),
    log:
        "logs/class_grid/{run}/{nimg}-{sigma_rel}-{guidance}.log",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/class_grid.py"
