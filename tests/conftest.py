"""Shared fixtures: an isolated home for every test, and the CLI run in-process with its exit status and output."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from spamlang.cli import main

#: what the trackers, matplotlib and SpamLang's caches read or write in a user's home, pointed into each test's tmp
ISOLATED = ("HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "WANDB_DIR", "WANDB_CONFIG_DIR",
            "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "MPLCONFIGDIR")
#: settings from the user's environment that would send a test's tracker runs or caches elsewhere
CLEARED = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE",
           "WANDB_PROJECT", "SPAMLANG_CACHE_DIR", "NETRC")


@pytest.fixture(autouse=True, scope="session")
def isolated_home(tmp_path_factory):
    """The whole session runs with its home, caches and tracker settings in a tmp folder, so that no test writes
    into the user's home (W&B and MLflow settings, SpamLang's floor cache, matplotlib's font cache)."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        for name in ISOLATED:
            path = home if name == "HOME" else home / name.lower()
            path.mkdir(exist_ok=True)
            patch.setenv(name, str(path))
        for name in CLEARED:
            patch.delenv(name, raising=False)
        yield home


@pytest.fixture(autouse=True)
def isolated_cwd(tmp_path_factory, monkeypatch):
    """Each test starts in a working folder of its own, so that a default output (``runs/``, ``out/``,
    ``measurements/``) never lands in the repository or in ``/``."""
    monkeypatch.chdir(tmp_path_factory.mktemp("cwd"))


def _tree(repo: Path) -> set[str]:
    """The repository's top-level entries and every file of its published results."""
    return {p.name for p in repo.iterdir()} | {str(p.relative_to(repo)) for p in (repo / "results").rglob("*")}


@pytest.fixture(autouse=True, scope="session")
def nothing_written_outside_tmp():
    """A test run leaves ``/``, the repository's top level and its published results as it found them."""
    repo = Path(__file__).resolve().parent.parent
    before = set(os.listdir("/")), _tree(repo)
    yield
    after = set(os.listdir("/")), _tree(repo)
    assert after[0] <= before[0], f"the tests wrote into /: {sorted(after[0] - before[0])}"
    assert after[1] <= before[1], f"the tests wrote into the repository: {sorted(after[1] - before[1])[:5]}"


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_cli(capsys):
    """Call ``spamlang`` with a list of arguments; return its exit code, stdout and stderr."""
    def run(*args):
        code = 0
        try:
            main(list(map(str, args)))
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)
    return run


def assert_user_error(result, *fragments):
    """Exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert lines and lines[-1].startswith("spamlang: error:"), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


