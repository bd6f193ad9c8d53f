"""Packaging: one version number, an SPDX license, py.typed and the example configs in the wheel, a bounded Ray.

The wheel is built for real (setuptools' own backend, no network: the venv's setuptools) from a copy of the
sources, and its contents are read back.
"""

from __future__ import annotations

import email
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

import raymlops

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_version_is_written_once():
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "raymlops.__version__"}
    literal = re.compile(re.escape(f'"{raymlops.__version__}"'))
    holders = [str(p.relative_to(ROOT)) for p in [ROOT / "pyproject.toml", *(ROOT / "raymlops").rglob("*.py")]
               if literal.search(p.read_text())]
    assert holders == ["raymlops/__init__.py"]


def test_the_license_is_an_spdx_expression_with_its_file():
    assert PYPROJECT["project"]["license"] == "Apache-2.0"
    assert all((ROOT / f).is_file() for f in PYPROJECT["project"]["license-files"])
    assert not [c for c in PYPROJECT["project"].get("classifiers", []) if c.startswith("License ::")]


def test_ray_has_an_upper_bound_that_the_installed_ray_meets():
    import ray

    ray_req = next(Requirement(d) for d in PYPROJECT["project"]["dependencies"] if d.startswith("ray["))
    assert any(s.operator == "<" for s in ray_req.specifier), ray_req
    assert ray_req.specifier.contains(ray.__version__), (ray_req, ray.__version__)


def test_the_example_configs_are_the_repository_configs():
    found = raymlops.example_configs()
    assert sorted(found) == ["churn.yaml", "features.yaml"]
    for name, path in found.items():
        assert path.samefile(ROOT / "configs" / name)  # one copy: the package links to configs/


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> tuple[zipfile.ZipFile, str]:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", *PYPROJECT["project"]["license-files"]):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "configs", src / "configs")
    shutil.copytree(ROOT / "raymlops", src / "raymlops", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    code = ("import sys; from setuptools import build_meta as b; "
            "print(b.build_wheel(sys.argv[1]))")
    done = subprocess.run([sys.executable, "-W", "default", "-c", code, str(out)], cwd=src, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    name = done.stdout.strip().splitlines()[-1]
    return zipfile.ZipFile(out / name), done.stdout + done.stderr


def test_the_wheel_ships_version_license_types_and_configs(wheel):
    whl, log = wheel
    names = set(whl.namelist())
    assert "raymlops/py.typed" in names
    for name in ("churn.yaml", "features.yaml"):
        assert whl.read(f"raymlops/configs/{name}") == (ROOT / "configs" / name).read_bytes()
    meta = email.message_from_bytes(whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    assert meta["Version"] == raymlops.__version__
    assert meta["License-Expression"] == "Apache-2.0" and meta["License"] is None
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # setuptools says nothing deprecated about this pyproject (it did for `license = {text = ...}`).
    assert "Deprecat" not in log and "deprecat" not in log, log[-3000:]
