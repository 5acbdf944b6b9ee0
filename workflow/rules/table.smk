# All metrics -> results/fid_table.csv and results/fid_vs_sigma_rel.png (annotated in `snakemake --report`).


rule table:
    input:
        metrics=all_metrics,
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
