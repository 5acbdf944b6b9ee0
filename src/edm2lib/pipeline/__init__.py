"""The Snakemake pipeline's library side: config schema and points, one step per rule, the results table."""
