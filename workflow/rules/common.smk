# Paths and input functions shared by the rules; the config logic itself lives in edm2lib.pipeline.
from edm2lib import files
from edm2lib.pipeline import config as pipeline

DATA = f"data/{config['data']['name']}"
POINTS = pipeline.points(config)
BLOCKS = range(config["sampling"]["seed_blocks"])

wildcard_constraints:
    run=r"[A-Za-z0-9_.-]+",
    nimg=r"\d{12}",
    sigma_rel=r"\d\.\d{3}",
    guidance=r"[A-Za-z0-9_]+",
    block=r"\d+",
    detector=r"inception|dinov2",


def training_data(wildcards):
    """What the networks are trained on: SD-VAE latents or the images themselves."""
    return f"{DATA}/latents.h5" if config["data"]["encoder"] == "sd-vae" else f"{DATA}/images.h5"


def point(wildcards):
    return pipeline.Point(wildcards.run, int(wildcards.nimg), float(wildcards.sigma_rel), wildcards.guidance)


def phema_file(run, nimg, sigma_rel):
    return f"runs/{run}/phema/{files.phema_name(nimg, sigma_rel)}"


def guide_file(wildcards):
    """The guiding network's reconstruction, or None without guidance."""
    target = pipeline.guide_target(config, point(wildcards))
    return None if target is None else phema_file(*target)


def sample_inputs(wildcards):
    """The reconstructions a sample job reads. `ancient`: a grid change rewrites a run's phema directory
    without changing the existing reconstructions, so it must not rerun their samples; a retraining still
    does, through the `trained` markers."""
    inputs = {"phema": ancient(f"runs/{wildcards.run}/phema"), "trained": f"runs/{wildcards.run}/trained.json"}
    target = pipeline.guide_target(config, point(wildcards))
    if target is not None:
        inputs["guide_phema"] = ancient(f"runs/{target[0]}/phema")
        inputs["guide_trained"] = f"runs/{target[0]}/trained.json"
    return inputs


def reference_stats(wildcards):
    return {d: f"{DATA}/ref-{d}.npz" for d in config["metrics"]["detectors"]}


def all_metrics(wildcards):
    return [f"metrics/{p.run}/{p.name}/block{b}.json" for p in POINTS for b in BLOCKS]


def all_grids(wildcards):
    return [f"samples/{p.run}/{p.name}/block0.png" for p in POINTS]


def all_profile_plots(wildcards):
    return [f"results/phema-profiles-{run}.png" for run in pipeline.phema_runs(config)]


def launcher(wildcards, resources):
    """`srun -n <tasks> -c <cpus>` for rules the profile marks `mpi` (one rank per GPU; slurm executor plugin docs, MPI jobs);
    the rule uses it only inside a SLURM job, so the same profile also runs on a laptop (one process)."""
    if not resources.get("mpi"):
        return ""
    cpus = resources.get("cpus_per_task")
    return f"{resources.mpi} -n {resources.tasks}" + (f" -c {cpus}" if cpus else "")
