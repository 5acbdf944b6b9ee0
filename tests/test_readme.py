"""The README's Python example names files the demo produces, and runs against a network file of that name
built like the CI config's (edm2-tiny): the example cannot drift from the pipeline's outputs."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

from edm2lib import Precond, get_preset
from edm2lib.files import phema_name, save_network
from edm2lib.pipeline import config as pipeline

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use it from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def demo_outputs() -> set[str]:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    pipeline.validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
    return {f"runs/{p.run}/phema/{phema_name(p.nimg, p.sigma_rel)}" for p in pipeline.points(config)}


def test_readme_example_uses_demo_file_names_and_runs(tmp_path, monkeypatch):
    code = readme_example()
    paths = re.findall(r'"(runs/[^"]+)"', code)
    assert paths, "the README example loads no pipeline output"
    outputs = demo_outputs()
    for path in paths:
        assert path in outputs, f"README example names {path}, which the demo does not produce"
        net = Precond(**get_preset("edm2-tiny").network)  # the CI config's network
        os.makedirs(tmp_path / Path(path).parent, exist_ok=True)
        save_network(tmp_path / path, net.state_dict(), net.config, nimg=1, sigma_rel=0.1, gamma=1.0)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # the README's own example
    x = scope["x"]
    assert x.shape == (8, 3, 16, 16) and x.isfinite().all()
