# Paths, wildcards and input/params functions shared by the rules; the config logic lives in edm2lib.pipeline.
import re

from edm2lib import files
from edm2lib.pipeline import config as pipeline
from edm2lib.pipeline.table import FLOOR_RUN
from edm2lib.pipeline.steps import clear_fresh_request, request_fresh, training_identity

DATA = f"data/{config['data']['name']}"
ENV = "../envs/edm2lib.yaml"  # every rule's software environment (`--software-deployment-method conda`)
POINTS = pipeline.points(config)
BLOCKS = range(config["sampling"]["seed_blocks"])
SEEDS = {b: pipeline.seed_range(config, b) for b in BLOCKS}
GUIDE = {p: pipeline.guide_target(config, p) for p in POINTS}  # per point, computed once (DAG speed)
GUIDANCE = {g: pipeline.guidance_params(config, g) for g in config["guidance"]}  # the sample params
TRAINING_DATA = f"{DATA}/latents.h5" if config["data"]["encoder"] == "sd-vae" else f"{DATA}/images.h5"
TRAINED = [run for run in config["runs"] if run not in pipeline.official_runs(config)]  # released runs: none
IDENTITY = {run: training_identity(config["runs"][run], TRAINING_DATA, f"runs/{run}") for run in TRAINED}


wildcard_constraints:
    run=r"(?!\.)(?!.*\.\.)[A-Za-z0-9_.-]+",
    nimg=r"\d{12}",
    sigma_rel=r"\d\.\d{3}",
    guidance=r"[A-Za-z0-9_]+",
    block=r"\d+",
    detector=r"inception|dinov2|classifier",


def point(wildcards):
    return pipeline.Point(wildcards.run, int(wildcards.nimg), float(wildcards.sigma_rel), wildcards.guidance)


def phema_file(run, nimg, sigma_rel):
    return f"runs/{run}/phema/{files.phema_name(nimg, sigma_rel)}"


def guide_of(wildcards):
    p = point(wildcards)
    return GUIDE[p] if p in GUIDE else pipeline.guide_target(config, p)


def guide_file(wildcards):
    """The guiding network's reconstruction, or None without guidance."""
    target = guide_of(wildcards)
    return None if target is None else phema_file(*target)


def sample_inputs(wildcards):
    """The reconstructions a sample job reads. `ancient`: a grid change rewrites a run's phema directory
    without changing the existing reconstructions, so it must not rerun their samples; a retraining still
    does, through the `trained` markers."""
    inputs = {"phema": ancient(f"runs/{wildcards.run}/phema"), "trained": f"runs/{wildcards.run}/trained.json"}
    target = guide_of(wildcards)
    if target is not None:
        inputs["guide_phema"] = ancient(f"runs/{target[0]}/phema")
        inputs["guide_trained"] = f"runs/{target[0]}/trained.json"
    return inputs


def request_fresh_training(dag):
    """`onstart`: mark the train jobs this invocation forces (a stale run of them then trains afresh,
    workflow/rules/train.smk); drop the marks of earlier invocations."""
    forced = {
        job.wildcards.run for job in dag.needrun_jobs() if job.rule.name == "train" and dag.reason(job).forced
    }
    for run in TRAINED:
        if run in forced:
            request_fresh(f"runs/{run}", IDENTITY[run])
        else:
            clear_fresh_request(f"runs/{run}")


REFERENCE_STATS = {d: f"{DATA}/ref-{d}.npz" for d in config["metrics"]["detectors"]}
DETECTORS = pipeline.detector_settings(config, config["metrics"]["detectors"])
# the data-specific classifier detector (detector.smk): an input of the rules whose features it computes
CLASSIFIER = pipeline.classifier_path(config)
CLASSIFIER_INPUT = {"classifier_file": CLASSIFIER} if "classifier" in config["metrics"]["detectors"] else {}


def all_floor(wildcards):
    """The floor's metrics (real held-out images, one file per seed block), when `metrics.floor` is on."""
    return [f"metrics/{FLOOR_RUN}/block{b}.json" for b in BLOCKS] if config["metrics"]["floor"] else []


def all_class_grids(wildcards):
    """Samples by class, for runs trained here: a released model's data set (ImageNet) is not on disk."""
    return [f"results/grids/{p.run}/{p.name}.png" for p in POINTS if p.run in TRAINED]


def all_metrics(wildcards):
    return [f"metrics/{p.run}/{p.name}/block{b}.json" for p in POINTS for b in BLOCKS]


def all_grids(wildcards):
    return [f"samples/{p.run}/{p.name}/block0.png" for p in POINTS]


def all_profile_plots(wildcards):
    return [f"results/phema-profiles-{run}.png" for run in pipeline.phema_runs(config)]


def launcher(wildcards, resources):
    """`srun -n <tasks> -c <cpus>` for rules the profile marks `mpi` (one rank per GPU, docs/pipeline.md:
    SLURM); used only inside a SLURM job, so the same profile also runs on a laptop (one process)."""
    if not resources.get("mpi"):
        return ""
    cpus = resources.get("cpus_per_task")
    return f"{resources.mpi} -n {resources.tasks}" + (f" -c {cpus}" if cpus else "")


# Released runs (official.smk)
POSTHOC_RUNS = pipeline.official_runs(config, pipeline.OFFICIAL)
RAW_RUNS = pipeline.official_runs(config, pipeline.OFFICIAL_RAW)


def _one_of(names):
    return "|".join(re.escape(n) for n in names)


def official_targets(wildcards):
    """The ours-vs-paper plot, for configs with released runs."""
    return ["results/ours_vs_paper.png"] if POSTHOC_RUNS or RAW_RUNS else []

