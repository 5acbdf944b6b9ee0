"""Released runs through the real rules, offline: files written in the official layouts (post-hoc network
pickles, raw EMA snapshot pickles, a reference-statistics pickle) in a local folder -> convert -> phema ->
sample -> score -> table with the paper column and the ours-vs-paper plot; and the missing-download line."""

from __future__ import annotations

import csv
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edm2lib.nn.networks import Precond
from edm2lib.nn.presets import get_preset
from pipeline_helpers import job_counts, snakemake
from test_convert import _Persistent, _record, _stub_reconstruct

pytestmark = pytest.mark.slow
RAW_END = 2 * 2**25  # two raw snapshot times


def _write_network(path: Path, label_dim: int, seed: int) -> None:
    """An official-layout snapshot pickle of a random tiny network (stub classes, see test_convert)."""
    torch.manual_seed(seed)
    net = Precond(**{**get_preset("edm2-tiny").network, "label_dim": label_dim})
    config = dict(net.config)
    args = [config.pop(k) for k in ("img_resolution", "img_channels", "label_dim")]
    ema = _record(net.half(), "raise SystemExit('module_src executed')\n", args, config)
    enc = _Persistent("StandardRGBEncoder", {"_init_args": (), "_init_kwargs": {}}, "")
    loss = _Persistent("EDM2Loss", {"P_mean": -0.4, "P_std": 1.0, "sigma_data": 0.5}, "")
    with open(path, "wb") as f:
        pickle.dump({"encoder": enc, "loss_fn": loss, "ema": ema, "dataset_kwargs": {}}, f)


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """A local folder holding every file the test config fetches, in NVIDIA's names and layouts."""
    folder = tmp_path_factory.mktemp("released")
    persistence, util = types.ModuleType("torch_utils.persistence"), types.ModuleType("dnnlib.util")
    _stub_reconstruct.__module__, _stub_reconstruct.__qualname__ = (
        persistence.__name__,
        "_reconstruct_persistent_obj",
    )
    persistence._reconstruct_persistent_obj = _stub_reconstruct
    with pytest.MonkeyPatch.context() as mp:
        for module in (types.ModuleType("torch_utils"), persistence, types.ModuleType("dnnlib"), util):
            mp.setitem(sys.modules, module.__name__, module)
        for i, name in enumerate(["edm2-img512-xs-2147483-0.200", "edm2-img512-xs-2147483-0.150"]):
            _write_network(folder / f"{name}.pkl", 10, i)
        _write_network(folder / "edm2-img512-xs-uncond-2147483-0.150.pkl", 0, 5)
        for t, kimg in enumerate([33554, 67108]):
            for s, std in enumerate(["0.050", "0.100"]):
                _write_network(folder / f"edm2-img512-xs-{kimg:07d}-{std}.pkl", 10, 10 + 2 * t + s)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((32, 32))
    refs = {"num_images": 1000, "fd_dinov2": {"mu": rng.standard_normal(32), "sigma": a @ a.T / 32}}
    (folder / "img512.pkl").write_bytes(pickle.dumps(refs))
    return folder


def _config(work: Path, local_dir: Path) -> Path:
    config = {
        "data": {"name": "img512", "source": "official", "resolution": 16},
        "runs": {
            "xs": {
                "source": "official",
                "model": "edm2-img512-xs",
                "points": [{"sigma_rel": 0.2, "guidance": "none"}, {"sigma_rel": 0.15, "guidance": "cfg17"}],
            },
            "xs_uncond": {"source": "official", "model": "edm2-img512-xs-uncond", "guidance": []},
            "xsraw": {
                "source": "official-raw",
                "model": "edm2-img512-xs",
                "duration": RAW_END,
                "guidance": ["none"],
            },
        },
        "phema": {"sigma_rel": [0.1]},
        "guidance": {
            "none": {"w": 1.0},
            "cfg17": {"w": 1.7, "guide": {"run": "xs_uncond", "nimg": "final", "sigma_rel": "same"}},
        },
        "sampling": {"num_steps": 4, "images": 16, "batch": 16},
        "metrics": {
            "detectors": ["dinov2"],
            "allow_random_init": True,
            "download": False,
            "random_arch": {"dinov2": {"embed_dim": 32, "depth": 1, "num_heads": 2}},
            "batch": 16,
        },
        "official": {"local_dir": str(local_dir), "download": False},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def test_released_files_run_through_convert_phema_sample_score_and_table(released, tmp_path):
    config = _config(tmp_path, released)
    dry = snakemake(tmp_path, "-n", "--configfile", str(config))
    counts = job_counts(dry.stdout + dry.stderr)
    assert "train" not in counts and "refstats" not in counts and "prepare" not in counts
    assert counts["official_posthoc"] == 2 and counts["official_raw"] == 1 and counts["official_refs"] == 1
    proc = snakemake(tmp_path, "--cores", "2", "--configfile", str(config))
    assert job_counts(proc.stdout + proc.stderr)["sample"] == 3
    with open(tmp_path / "results" / "fid_table.csv") as f:
        rows = {(r["run"], r["sigma_rel"], r["guidance"]): r for r in csv.DictReader(f)}
    assert set(rows) == {("xs", "0.2000", "none"), ("xs", "0.1500", "cfg17"), ("xsraw", "0.1000", "none")}
    assert rows[("xs", "0.2000", "none")]["paper_fd_dinov2"] == "103.3900"  # EDM2 Table 2, XS FD-DINOv2
    assert rows[("xs", "0.1500", "cfg17")]["paper_fd_dinov2"] == "79.9400"  # EDM2 Table 5, XS with CFG
    assert rows[("xs", "0.1500", "cfg17")]["guide"] == "xs_uncond@2147483648/0.150"
    assert rows[("xsraw", "0.1000", "none")]["paper_fd_dinov2"] == "" and rows[("xsraw", "0.1000", "none")][
        "nimg"
    ] == str(RAW_END)
    for r in rows.values():
        assert r["model"] == "edm2-img512-xs" and float(r["fd_dinov2"]) > 0 and r["random_init"] == "True"
    assert sorted(p.name for p in (tmp_path / "runs" / "xs" / "phema").glob("phema-*")) == [
        "phema-002147483648-0.150.safetensors",
        "phema-002147483648-0.200.safetensors",
    ]
    assert len(list((tmp_path / "runs" / "xsraw" / "snapshots").glob("snapshot-*.safetensors"))) == 4
    assert (tmp_path / "runs" / "xsraw" / "phema" / "phema-000067108864-0.100.safetensors").is_file()
    assert (tmp_path / "results" / "ours_vs_paper.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "downloads" / "official" / "img512.pkl.sha256").is_file()  # pinned at first use
    # where released files come from, and performance knobs, are not what the outputs depend on
    mirror = tmp_path / "mirror"
    shutil.copytree(released, mirror)
    edited = yaml.safe_load(config.read_text())
    edited["official"] |= {"local_dir": str(mirror), "download_dir": "elsewhere/official"}
    edited["metrics"]["batch"] = 8
    config.write_text(yaml.safe_dump(edited, sort_keys=False))
    again = snakemake(tmp_path, "-n", "--configfile", str(config))
    assert "Nothing to be done" in again.stdout + again.stderr, job_counts(again.stdout + again.stderr)


def test_a_missing_download_is_one_line_naming_the_url_and_the_place(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    config = str(_config(tmp_path, empty))
    proc = snakemake(tmp_path, "runs/xs/trained.json", "--cores", "1", "--configfile", config, check=False)
    assert proc.returncode != 0
    line = next(x for x in proc.stderr.splitlines() if x.startswith("error: FetchError"))
    url = "https://nvlabs-fi-cdn.nvidia.com/edm2/posthoc-reconstructions/edm2-img512-xs-2147483-0.150.pkl"
    assert (
        url in line and f"place it at {tmp_path}/downloads/official/" not in line
    )  # relative to the workdir
    assert "place it at downloads/official/edm2-img512-xs-2147483-0.150.pkl" in line
    assert f"official.local_dir {empty}" in line
    assert not (tmp_path / "runs" / "xs" / "phema").exists()
