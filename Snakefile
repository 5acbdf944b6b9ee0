# edm2lib pipeline: raw images -> results/fid_table.csv (docs/pipeline.md; keys in config/README.md).
from edm2lib.pipeline.config import validate_config

configfile: "config/config.yaml"
validate_config(config, workflow.source_path("workflow/schemas/config.schema.yaml"))

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/latents.smk"
include: "workflow/rules/refstats.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/phema.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/metrics.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/official.smk"

rule all:
    input: "results/fid_table.csv", "results/fid_vs_sigma_rel.png", all_profile_plots, all_grids, official_targets
