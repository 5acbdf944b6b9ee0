# Reconstruction (+ guide) -> samples/<run>/<point>/block<b>.h5 (uint8 images, seeds, labels) + a PNG grid.
# params: what the images depend on; `sampling.batch` only changes speed and is read at run time.


rule sample:
    input:
        unpack(sample_inputs),
    output:
        images="samples/{run}/{nimg}-{sigma_rel}-{guidance}/block{block}.h5",
        grid=report(
            "samples/{run}/{nimg}-{sigma_rel}-{guidance}/block{block}.png",
            caption="../report/grid.rst",
            category="Samples",
            subcategory="{run}",
            labels={"nimg": "{nimg}", "sigma_rel": "{sigma_rel}", "guidance": "{guidance}", "block": "{block}"},
        ),
    log:
        "logs/sample/{run}/{nimg}-{sigma_rel}-{guidance}-block{block}.log",
    benchmark:
        "benchmarks/sample/{run}/{nimg}-{sigma_rel}-{guidance}-block{block}.tsv"
    params:
        net=lambda wildcards: phema_file(wildcards.run, int(wildcards.nimg), float(wildcards.sigma_rel)),
        guide=guide_file,
        guidance=lambda wildcards: GUIDANCE[wildcards.guidance],
        seeds=lambda wildcards: SEEDS[int(wildcards.block)],
        num_steps=config["sampling"]["num_steps"],
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        ENV
    script:
        "../scripts/sample.py"
