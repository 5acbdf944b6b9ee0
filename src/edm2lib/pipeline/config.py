"""Pipeline config logic: validation with one-line messages, and the grid of scored points it expands to.

The Snakemake rules only wire files together; everything they need to know about the config (which
post-hoc EMA targets a run needs, which points get sampled and scored, which guide network a point uses,
which seeds a block holds) is computed here, so it is testable without Snakemake.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from edm2lib import files

NAME_PATTERN = r"^(?!\.)(?!.*\.\.)[A-Za-z0-9_.-]+$"  # run, data and guidance names (workflow schema)
FINAL = "final"  # `nimg: final` = the end of a run's training
SAME = "same"  # guide `sigma_rel: same` = the sigma_rel of the point being guided (CFG in the paper)


@dataclasses.dataclass(frozen=True)
class Point:
    """One scored configuration: a post-hoc EMA reconstruction of a run, sampled with one guidance setting."""

    run: str
    nimg: int
    sigma_rel: float
    guidance: str

    @property
    def name(self) -> str:
        """Directory name of the point, e.g. `000000131072-0.100-ag` (nimg zero-padded to 12 digits)."""
        return files.point_name(self.nimg, self.sigma_rel, self.guidance)


def _path(parts: list[Any]) -> str:
    return ".".join(str(p) for p in parts) or "<top level>"


def _message(error: Any) -> str:
    """One line for a jsonschema error: where, what, and where the keys are documented."""
    where = _path(list(error.absolute_path))
    if error.validator == "pattern" and error.schema.get("pattern") == NAME_PATTERN:
        rule = "must use only A-Z a-z 0-9 _ . - and not start with '.' or contain '..'"
        return f"config: {where}: name {error.instance!r} {rule}"
    if error.validator == "additionalProperties":
        return f"config: {where}: {error.message}; the allowed keys are listed in config/README.md"
    return f"config: {where}: {error.message} (see config/README.md)"


def validate_config(config: dict, schema_path: str | Path) -> dict:
    """Validate `config` against the JSON schema (filling in its defaults), then check cross-references.

    Raises ValueError with one line naming the offending key and value. Returns `config` (modified in place).
    """
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    # fill in defaults while validating (the jsonschema FAQ's extension, as snakemake.utils.validate does)
    set_defaults = validator_cls.VALIDATORS["properties"]

    def properties(validator, props, instance, subschema):
        if isinstance(instance, dict):
            for key, sub in props.items():
                if "default" in sub:
                    instance.setdefault(key, sub["default"])
        yield from set_defaults(validator, props, instance, subschema)

    validator = jsonschema.validators.extend(validator_cls, {"properties": properties})(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(config))
    if error is not None:
        raise ValueError(_message(error))
    _expand_official(config)
    _check_references(config)
    return config


# --- official releases (docs/official.md) ---
OFFICIAL, OFFICIAL_RAW = "official", "official-raw"  # runs.<run>.source values


def official_runs(config: dict, source: str | None = None) -> list[str]:
    """Runs that come from NVIDIA's release (of one `source`, or either) instead of training."""
    return [
        name
        for name, run in config["runs"].items()
        if run.get("source") in ((OFFICIAL, OFFICIAL_RAW) if source is None else (source,))
    ]


def _expand_official(config: dict) -> None:
    """Fill in what a released run's training would have said (preset, duration, snapshot interval), so
    every other rule treats it like a trained run; unknown models and times fail with one line."""
    if not official_runs(config):
        return  # (edm2lib.official loads torch: a config without released runs does not need it)
    from edm2lib.official import releases

    for name in official_runs(config):
        run = config["runs"][name]
        try:
            rel = releases.release(run["model"])
        except ValueError as e:
            raise ValueError(f"config: runs.{name}.model: {e}") from None
        kimg = run.get("kimg") or rel.kimg
        if kimg is None:
            raise ValueError(f"config: runs.{name}.kimg: {rel.name} has no final time listed; give kimg")
        end = releases.nimg_from_kimg(kimg)
        if run["source"] == OFFICIAL:
            try:
                releases.posthoc_name(rel.name, end, 0.1)
            except ValueError as e:
                raise ValueError(f"config: runs.{name}.kimg: {e}") from None
            duration, step = end, end
        else:
            duration, step = (
                run.get("duration") or end,
                run.get("snapshot_nimg") or releases.RAW_SNAPSHOT_NIMG,
            )
            if kimg != rel.kimg or step % releases.RAW_SNAPSHOT_NIMG or duration % step or duration > end:
                raise ValueError(
                    f"config: runs.{name}: raw snapshots of {rel.name} exist every "
                    f"{releases.RAW_SNAPSHOT_NIMG} images up to {rel.nimg}; "
                    f"duration {duration} / snapshot_nimg {step} must fit that"
                )
        run.update(
            preset=rel.preset, conditional=rel.conditional, batch=2048, duration=duration, snapshot_nimg=step
        )


def _check_references(config: dict) -> None:
    runs = config["runs"]
    for name, run in runs.items():
        if run["duration"] % run["snapshot_nimg"]:
            raise ValueError(
                f"config: runs.{name}: duration {run['duration']} is not a multiple of "
                f"snapshot_nimg {run['snapshot_nimg']}"
            )
    for name, g in config["guidance"].items():
        interval = g.get("interval")
        if interval is not None and not interval[0] < interval[1]:
            raise ValueError(
                f"config: guidance.{name}.interval: {interval} must be [low, high] with low < high"
            )
        guide = g.get("guide")
        if guide is None:
            if g["w"] != 1:
                raise ValueError(f"config: guidance.{name}: w = {g['w']} needs a guide network (guide: ...)")
            continue
        if guide["run"] not in runs:
            raise ValueError(
                f"config: guidance.{name}.guide.run: unknown run {guide['run']!r}; runs: {sorted(runs)}"
            )
        _resolve_nimg(config, guide["run"], guide["nimg"], f"guidance.{name}.guide.nimg")
    for name, run in runs.items():
        for g in run.get("guidance") or []:
            if g not in config["guidance"]:
                raise ValueError(
                    f"config: runs.{name}.guidance: unknown guidance {g!r}; "
                    f"defined: {sorted(config['guidance'])}"
                )
        for i, p in enumerate(run.get("points") or []):
            _resolve_nimg(config, name, p.get("nimg", FINAL), f"runs.{name}.points[{i}].nimg")
            if p["guidance"] not in config["guidance"]:
                raise ValueError(
                    f"config: runs.{name}.points[{i}].guidance: unknown guidance {p['guidance']!r}; "
                    f"defined: {sorted(config['guidance'])}"
                )
        if run.get("points"):
            continue
        for nimg in config["phema"]["nimg"]:
            _resolve_nimg(config, name, nimg, "phema.nimg")
    _check_ablation(config)
    rounded = [f"{s:.3f}" for s in config["phema"]["sigma_rel"]]
    if len(set(rounded)) != len(rounded):
        raise ValueError(
            f"config: phema.sigma_rel: values must differ in the first 3 decimals (got {rounded})"
        )


TRADITIONAL_ONLY = ("ema_halflife_nimg", "ema_rampup_ratio")  # run keys that need a traditional EMA


def _check_ablation(config: dict) -> None:
    """Per-run ladder keys that cannot work together (docs/ablation.md), one line each; the letter and
    `ema` values themselves are checked by the schema."""
    for name in official_runs(config):
        for key in ("ablation", "ema"):
            if key in config["runs"][name]:
                raise ValueError(f"config: runs.{name}.{key}: a released run has no training recipe")
    traditional = []
    for name in [r for r in config["runs"] if r not in official_runs(config)]:
        run = config["runs"][name]
        try:
            kind = resolved_training(run).ema
        except ValueError as e:
            raise ValueError(f"config: runs.{name}: {e}") from None
        given = [k for k in TRADITIONAL_ONLY if run.get(k) is not None]
        if kind != "traditional" and given:
            raise ValueError(
                f"config: runs.{name}.{given[0]}: only a traditional EMA has a half-life, and this run's "
                f"EMA is '{kind}' (ablation {run.get('ablation') or 'G'}); set runs.{name}.ema: "
                f"traditional or drop the key (ema: power | traditional; A's default is traditional)"
            )
        if kind == "traditional":
            traditional.append(name)
    for g, setting in config["guidance"].items():
        guide = setting.get("guide")
        if guide is not None and guide["run"] in traditional:
            raise ValueError(
                f"config: guidance.{g}.guide.run: run {guide['run']!r} has a traditional EMA (one network, "
                f"no post-hoc reconstruction); guide with a power-function EMA run"
            )


def _resolve_nimg(config: dict, run: str, nimg: int | str, key: str) -> int:
    """A training time of `run` in images: `final` = its duration; a number must be a snapshot time."""
    r = config["runs"][run]
    if nimg == FINAL:
        return r["duration"]
    if not 0 < nimg <= r["duration"] or nimg % r["snapshot_nimg"]:
        raise ValueError(
            f"config: {key}: nimg {nimg} of run {run!r} must be a multiple of its snapshot_nimg "
            f"{r['snapshot_nimg']} in (0, {r['duration']}] or 'final'"
        )
    return int(nimg)


def sampled_runs(config: dict) -> list[str]:
    """Runs whose reconstructions are sampled and scored (a run with `guidance: []` only guides)."""
    return [name for name, run in config["runs"].items() if run.get("guidance", None) != []]


def run_guidance(config: dict, run: str) -> list[str]:
    """Guidance settings applied to `run` (all of them unless the run lists its own)."""
    own = config["runs"][run].get("guidance")
    return list(config["guidance"]) if own is None else list(own)


def points(config: dict) -> list[Point]:
    """Every scored point: sampled runs x phema times x sigma_rel grid x guidance settings."""
    out = []
    for run in sampled_runs(config):
        own = config["runs"][run].get("points")
        if own:  # a run with its own list of points (e.g. each released model at its published settings)
            for p in own:
                nimg = _resolve_nimg(config, run, p.get("nimg", FINAL), "points.nimg")
                out.append(Point(run, nimg, p["sigma_rel"], p["guidance"]))
            continue
        for nimg in config["phema"]["nimg"]:
            nimg = _resolve_nimg(config, run, nimg, "phema.nimg")
            traditional = _traditional_sigma_rel(config, run, nimg)
            grid = config["phema"]["sigma_rel"] if traditional is None else [traditional]  # A: one EMA
            for sigma_rel in grid:
                for g in run_guidance(config, run):
                    out.append(Point(run, nimg, sigma_rel, g))
    return out


def _traditional_sigma_rel(config: dict, run: str, nimg: int) -> float | None:
    """The one sigma_rel of a traditional-EMA run at `nimg` (docs/ablation.md), None for post-hoc runs."""
    return traditional_sigma_rel(config["runs"][run], nimg)


# pipeline run keys that are not TrainConfig keys, or are named differently there
_RENAMED = {"ema_sigma_rel": "sigma_rels"}
_PIPELINE_ONLY = {"conditional", "guidance"}


def training_config(run: Mapping[str, Any], data: str, run_dir: str) -> dict[str, Any]:
    """The `edm2lib.training` config of one `runs.<name>` entry (None values keep the preset's)."""
    values: dict[str, Any] = {"data": str(data), "run_dir": str(run_dir)}
    for key, value in run.items():
        if key in _PIPELINE_ONLY or value is None:
            continue
        values[_RENAMED.get(key, key)] = value
    if not run.get("conditional", True):
        values["network"] = {**values.get("network", {}), "label_dim": 0}  # unconditional (CFG guide)
    return values


_DUMMY_DATA, _DUMMY_DIR = "data.h5", "runs/_"  # `TrainConfig.from_dict` never opens them


def resolved_training(run: Mapping[str, Any]) -> Any:
    """The `TrainConfig` a `runs.<name>` entry trains with (preset, recipe of its letter, overrides)."""
    from edm2lib.training.config import TrainConfig

    return TrainConfig.from_dict(training_config(run, _DUMMY_DATA, _DUMMY_DIR))


def traditional_sigma_rel(run: Mapping[str, Any], nimg: int) -> float | None:
    """sigma_rel (3 decimals) of a traditional-EMA run's snapshot at `nimg` (the std of its averaging
    profile over `nimg`, as EDM2 Fig. 5a places CONFIG A); None for a power-function EMA or a released run."""
    if run.get("source") is not None:
        return None
    return _traditional_sigma_rel_of(json.dumps(json_plain(run), sort_keys=True), int(nimg))


@functools.lru_cache(maxsize=1024)
def _traditional_sigma_rel_of(run_json: str, nimg: int) -> float | None:  # the DAG asks once per point
    from edm2lib.phema.profiles import traditional_sigma_rel as profile_sigma_rel

    cfg = resolved_training(json.loads(run_json))
    if cfg.ema != "traditional":
        return None
    return round(profile_sigma_rel(nimg, cfg.batch, cfg.ema_halflife_nimg, cfg.ema_rampup_ratio), 3)


def guide_target(config: dict, point: Point) -> tuple[str, int, float] | None:
    """(run, nimg, sigma_rel) of the reconstruction that guides `point`, or None without a guide."""
    guide = config["guidance"][point.guidance].get("guide")
    if guide is None:
        return None
    nimg = _resolve_nimg(config, guide["run"], guide["nimg"], f"guidance.{point.guidance}.guide.nimg")
    sigma_rel = point.sigma_rel if guide["sigma_rel"] == SAME else guide["sigma_rel"]
    return guide["run"], nimg, sigma_rel


def phema_targets(config: dict, run: str) -> list[tuple[int, float]]:
    """Sorted unique (nimg, sigma_rel) reconstructions of `run` that some point or guide needs."""
    targets = set()
    for p in points(config):
        if p.run == run:
            targets.add((p.nimg, round(p.sigma_rel, 3)))
        g = guide_target(config, p)
        if g is not None and g[0] == run:
            targets.add((g[1], round(g[2], 3)))
    return sorted(targets)


def phema_runs(config: dict) -> list[str]:
    """Runs reconstructed from snapshots (sampled runs and guide runs; released reconstructions excluded)."""
    posthoc = set(official_runs(config, OFFICIAL))
    return [run for run in config["runs"] if run not in posthoc and phema_targets(config, run)]


def snapshot_names(run_config: Mapping[str, Any]) -> list[tuple[int, float]]:
    """(nimg, sigma_rel) of every snapshot a run writes: every snapshot_nimg after 0, each tracked EMA."""
    step, duration = run_config["snapshot_nimg"], run_config["duration"]
    return [(n, s) for n in range(step, duration + 1, step) for s in run_config["ema_sigma_rel"]]


def seed_range(config: dict, block: int) -> tuple[int, int]:
    """First and one-past-last seed of seed block `block` (blocks are consecutive, `sampling.images` each)."""
    n = config["sampling"]["images"]
    if not 0 <= block < config["sampling"]["seed_blocks"]:
        raise ValueError(f"seed block {block} out of range [0, {config['sampling']['seed_blocks']})")
    start = config["sampling"].get("first_seed", 0) + block * n
    return start, start + n


def data_source(data: Mapping[str, Any]) -> str:
    """The `edm2lib.data.prepare_dataset` source for the `data` config section."""
    if data["source"] == "fashion-mnist":
        return "fashion-mnist" + (f":{data['path']}" if data.get("path") else "")
    return str(data["path"])


def model_name(run: Mapping[str, Any]) -> str:
    """The network a run trains: its preset, '-uncond' without labels, and its `network` overrides."""
    name = run["preset"] + ("" if run.get("conditional", True) else "-uncond")
    overrides = run.get("network") or {}
    listed = ",".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return name + (f"[{listed}]" if overrides else "")


def classifier_path(config: dict) -> str:
    """The data-specific classifier detector's file: `metrics.weights.classifier`, else the one the
    `detector` rule trains, data/<name>/classifier.safetensors."""
    given = config["metrics"]["weights"].get("classifier")
    return given or f"data/{config['data']['name']}/classifier.safetensors"


def point_record(config: dict, point: Point, block: int) -> dict[str, Any]:
    """What a results row says about a point and seed block besides its scores (`edm2lib.pipeline.table`)."""
    run = config["runs"][point.run]
    setting = config["guidance"][point.guidance]
    target = guide_target(config, point)
    first, end = seed_range(config, block)
    interval = setting.get("interval")
    return {
        "run": point.run,
        "model": model_name(run),
        "nimg": point.nimg,
        "sigma_rel": round(point.sigma_rel, 3),
        "guidance": point.guidance,
        "w": setting["w"],
        "guide": "" if target is None else f"{target[0]}@{target[1]}/{target[2]:.3f}",
        "interval": "" if interval is None else f"{interval[0]:g}-{interval[1]:g}",
        "steps": config["sampling"]["num_steps"],
        "seeds": f"{first}-{end - 1}",
        "block": block,
    }


# What each rule's output depends on (its Snakemake `params`): performance and runtime keys are left out, so
# editing them reruns nothing; the scripts read those from the config at run time.
IMAGE_KEYS = ("name", "source", "path", "labels", "resolution", "transform", "max_images")
RUN_RUNTIME_KEYS = (
    "batch_gpu", "checkpoint_minutes", "checkpoint_nimg", "keep_checkpoints", "status_nimg", "compile",
    "requeue", "deterministic", "guidance",
)  # fmt: skip


def prepare_params(config: dict) -> dict[str, Any]:
    """The `data` keys images.h5 depends on (not the encoder's)."""
    return {k: config["data"].get(k) for k in IMAGE_KEYS}


def canonical(value: Any) -> Any:
    """`value` with every mapping's keys sorted, at any depth: Snakemake compares params by their repr, so a
    param must not depend on the order of keys in the config file."""
    if isinstance(value, Mapping):
        return {k: canonical(value[k]) for k in sorted(value)}
    if isinstance(value, (list, tuple)):
        return type(value)(canonical(v) for v in value)
    return value


def train_params(config: dict, run: str) -> dict[str, Any]:
    """The `runs.<run>` keys training.yaml must follow at once: identity keys and `duration`."""
    return canonical({k: v for k, v in config["runs"][run].items() if k not in RUN_RUNTIME_KEYS})


def guidance_params(config: dict, name: str) -> dict[str, Any]:
    """The `guidance.<name>` setting a sample depends on (w, guide, interval)."""
    return canonical(config["guidance"][name])


def detector_settings(config: dict, detectors: list[str]) -> dict[str, Any]:
    """The `metrics` keys the detectors' features depend on (weights, random-init switch, sizes)."""
    m = config["metrics"]
    return {
        "detectors": list(detectors),
        "weights": {
            d: classifier_path(config) if d == "classifier" else m["weights"].get(d) for d in detectors
        },
        "random_arch": {d: canonical(m["random_arch"].get(d)) for d in detectors},
        "allow_random_init": m["allow_random_init"],
        "ref_images": m["ref_images"],
    }


def write_effective_config(config: dict, path: str | Path) -> Path:
    """The validated config with its defaults filled in, as YAML: what this run used, to read back later."""
    from edm2lib.files import atomic_write_text

    header = "# effective config of the last snakemake run (the config file + the schema's defaults)\n"
    atomic_write_text(path, header + yaml.safe_dump(json_plain(config), sort_keys=False))
    return Path(path)


def json_plain(value: Any) -> Any:
    """Plain dicts/lists (Snakemake's config may hold its own mapping types)."""
    if isinstance(value, Mapping):
        return {str(k): json_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_plain(v) for v in value]
    return value


def official_downloads(config: dict) -> list[str]:
    """Every URL the config's released runs and reference statistics fetch, in rule order."""
    from edm2lib.official import releases

    base = config["official"]["base_url"]
    urls = []
    if config["data"]["source"] == OFFICIAL:
        urls.append(releases.refs_url(config["data"].get("refs") or config["data"]["name"], base))
    for run in official_runs(config):
        r = config["runs"][run]
        if r["source"] == OFFICIAL:
            urls += [releases.posthoc_url(r["model"], n, s, base) for n, s in phema_targets(config, run)]
        else:
            times = releases.raw_times(r["model"], r["duration"], r["snapshot_nimg"])
            urls += [releases.raw_url(r["model"], n, s, base) for n in times for s in r["ema_sigma_rel"]]
    return urls
