# edm2lib pipeline: raw images -> results/fid_table.csv (docs/pipeline.md; keys in config/README.md).
# A `--configfile` is the whole config; the demo config/config.yaml applies only when none is given
# (a `configfile:` directive would be merged under the user's file).
import os

from edm2lib.pipeline.config import validate_config, write_effective_config

if not workflow.config_settings.configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))


report: "workflow/report/workflow.rst"  # `snakemake --report`: shows the effective config


include: "workflow/rules/snakemake_fixes.smk"
include: "workflow/rules/common.smk"
include: "workflow/rules/prepare.smk"
include: "workflow/rules/encode.smk"
include: "workflow/rules/refstats.smk"
include: "workflow/rules/detector.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/phema.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/score.smk"
include: "workflow/rules/table.smk"
include: "workflow/rules/official.smk"
include: "workflow/rules/ablation.smk"


onstart:
    write_effective_config(config, "results/config.effective.yaml")
    request_fresh_training(workflow.dag)  # a forced stale run trains afresh (workflow/rules/train.smk)


rule all:
    input:
        "results/fid_table.csv",
        "results/fid_vs_sigma_rel.png",
        all_profile_plots,
        all_grids,
        all_class_grids,
        official_targets,
