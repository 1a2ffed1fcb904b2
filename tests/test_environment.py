"""environment.yml (conda, Binder) must agree with pyproject.toml (pip)."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent
CONDA_NAMES = {"torch": "pytorch"}  # pip name -> conda-forge name
PIP_ONLY = {"torchdata"}  # installed by the environment's pip section, from PyPI


def conda_dependencies() -> dict[str, str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["channels"] == ["conda-forge"], "conda-forge only, no defaults channel"
    out = {}
    for dep in env["dependencies"]:
        if isinstance(dep, str):
            name, _, bound = re.match(r"([A-Za-z0-9_.-]+)\s*(>=\s*)?(.*)", dep).groups()
            out[name] = bound.strip()
    return out


def test_environment_yml_parses_and_installs_the_package() -> None:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert env["name"] == "dlviz"
    [pips] = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    assert pips[-1] == "-e .", "Binder needs the package itself installed with pip"
    assert "pip" in env["dependencies"]


def test_environment_yml_matches_pyproject_lower_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    conda = conda_dependencies()
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    [pips] = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    for spec in pips[:-1]:
        req = Requirement(spec.split("#")[0])
        assert req.name in PIP_ONLY, f"{req.name}: install it with conda, not pip"
        conda[req.name] = str(req.specifier).removeprefix(">=")
    for spec in project["dependencies"]:
        req = Requirement(spec)
        name = CONDA_NAMES.get(req.name, req.name)
        assert name in conda, f"{req.name} is in pyproject.toml but not in environment.yml"
        bounds = [s.version for s in req.specifier if s.operator == ">="]
        assert bounds, f"{req.name} needs a lower bound in pyproject.toml"
        assert conda[name] == bounds[0], f"{name}: environment.yml says >={conda[name]}, " \
                                         f"pyproject.toml says >={bounds[0]}"
    python = project["requires-python"].removeprefix(">=")
    assert conda["python"] == python


def test_no_exact_pins_for_users() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + project["optional-dependencies"]["dev"]
    assert not [s for s in specs if "==" in s], "pin only in constraints.txt"


def test_the_installed_torch_is_the_pinned_cpu_build() -> None:
    """What the test command installed from constraints.txt: the pinned torch, and a
    CPU build (no CUDA runtime: the series needs none, and a CUDA wheel is ~3 GB)."""
    import torch

    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]
    [pin] = [r for r in pins if r.name == "torch"]
    installed = version("torch")
    assert pin.specifier.contains(installed, prereleases=True), (str(pin), installed)
    assert torch.__version__ == installed
    assert torch.version.cuda is None, f"torch {installed} is a CUDA {torch.version.cuda} build"
    assert not torch.backends.cudnn.is_available()
