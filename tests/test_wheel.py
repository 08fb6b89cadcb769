"""The built wheel works on its own: built from a copy of the sources, installed into a fresh virtual environment
(which borrows this environment's third-party packages through a .pth file, so torch is not downloaded again), then
the command line runs from it: ``python -m spamlang tasks``, one tiny training run and its score."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: what a build needs from the repository (the rest is tests, results and benchmarks' code)
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "spamlang")


def _run(*args, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built without network from a copy of the sources (so the checkout gets no build/ folder)."""
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, src / name)
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", dist,
         src, cwd=src)
    (built,) = dist.glob("spamlang-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment with the wheel installed; third-party packages come from this environment."""
    env_dir = tmp_path_factory.mktemp("venv") / "env"
    _run(sys.executable, "-m", "venv", "--without-pip", env_dir, cwd=env_dir.parent)
    python = env_dir / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                     cwd=env_dir).stdout.strip())
    borrowed = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "borrowed-packages.pth").write_text("".join(f"{p}\n" for p in borrowed))
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel,
         cwd=env_dir)
    return env_dir


def test_the_wheel_holds_the_package_data_and_license(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "spamlang/__main__.py" in names and "spamlang/record/run-2.json" in names
    assert "spamlang/tasks/spam.py" in names and "spamlang/suites/smoke.toml" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") or n.endswith(".dist-info/LICENSE") for n in names)


def test_the_installed_wheel_runs_the_command_line(venv, tmp_path):
    python, script = venv / "bin" / "python", venv / "bin" / "spamlang"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")} | {"OMP_NUM_THREADS": "1"}
    find = "import importlib.util; print(importlib.util.find_spec('spamlang').origin)"  # finds without importing
    where = _run(python, "-c", find, cwd=tmp_path, env=env).stdout.strip()
    assert Path(where).is_relative_to(venv), f"spamlang imported from {where}, not from the installed wheel"
    assert "spam-zipf" in _run(python, "-m", "spamlang", "tasks", cwd=tmp_path, env=env).stdout
    _run(script, "train", "--task", "spam", "--vocab-size", "16", "--d-model", "8", "--layers", "1",
         "--steps", "4", "--eval-every", "2", "--batch-size", "8", "--eval-sequences", "8", "--diag-tokens", "16",
         "--device", "cpu", "--out", tmp_path / "runs", "--quiet", cwd=tmp_path, env=env)
    (record,) = (tmp_path / "runs").glob("*.json")
    assert json.loads(record.read_text())["status"] == "ok"
    scored = json.loads(_run(script, "score", tmp_path / "runs", "--format", "json", cwd=tmp_path, env=env).stdout)
    assert len(scored) == 1 and scored[0]["head"] == "linear"


def test_python_started_in_the_checkout_imports_the_source_tree_whole(venv):
    """With the wheel installed (not editable), Python started in the repository's root imports the source
    ``spamlang/`` first: its built-in tasks and suites must be part of that tree, not mapped in by the install."""
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    code = ("import spamlang, spamlang.tasks.spam; from spamlang.sweeps.suite import load; "
            "print(spamlang.__file__, len(load('smoke').runs))")
    where, runs = _run(python, "-c", code, cwd=ROOT, env=env).stdout.split()
    assert Path(where).is_relative_to(ROOT) and int(runs) > 0

