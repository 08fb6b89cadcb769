"""First-contact rough edges: checkpoint steps from folder names, output folders, references, float ranges."""
from __future__ import annotations

from pathlib import Path

import pytest

from spamlang.measure.checkpoint import expand, step_of
from tests.conftest import assert_user_error
from tests.test_leaderboard import grid, write_all


@pytest.mark.parametrize("name,step", [("tiny-gpt2", None), ("pythia-160m", None), ("gpt2-xl", None),
                                       ("llama-3.2-1b", None), ("step1000", 1000), ("checkpoint-1000", 1000),
                                       ("global_step20", 20), ("iter_0001000", 1000), ("ckpt-5", 5), ("123", 123),
                                       ("pythia-160m-step4000", 4000), ("Step300", 300)])
def test_a_checkpoint_step_comes_only_from_a_name_that_says_step(name, step):
    assert step_of(Path(name)) == step


def test_a_trajectory_is_ordered_by_step(tmp_path):
    for name in ("step100", "step20", "step3"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    assert [p.name for p in expand([tmp_path])] == ["step3", "step20", "step100"]


@pytest.fixture
def runs(tmp_path):
    return write_all(tmp_path / "runs", grid(seeds=2, vocab=(16, 32)))


@pytest.mark.parametrize("command", ["leaderboard", "fit"])
def test_no_command_writes_into_the_root_of_the_file_system(run_cli, runs, command):
    assert_user_error(run_cli(command, runs, "--out", "/"), "refusing to write into /", "root of the file system")


def test_run_refuses_the_root_as_its_results_folder(run_cli, tmp_path):
    from tests.test_suite import tiny
    assert_user_error(run_cli("run", tiny(tmp_path, steps=2), "--out", "/"), "root of the file system")


def test_an_unknown_speedup_reference_is_an_error_naming_the_heads(run_cli, runs):
    assert_user_error(run_cli("speedup", runs, "--reference", "nope"), "--reference 'nope'", "linear, lowrank:2")
    assert_user_error(run_cli("speedup", runs, "--reference", "lowrank:7"), "no run has that head")


@pytest.mark.parametrize("args", [
    ["prepare-text", "x.txt", "--out", "o", "--holdout", "nan"],
    ["prepare-text", "x.txt", "--out", "o", "--holdout", "inf"],
    ["measure", "m", "--text", "t.txt", "--step-norm", "nan"],
    ["measure", "m", "--text", "t.txt", "--max-memory", "inf"],
    ["doctor", "--seconds", "nan"],
    ["score", "runs", "--tolerance", "nan"],
], ids=" ".join)
def test_a_float_range_refuses_nan_and_inf(run_cli, args):
    assert_user_error(run_cli(*args), args[-2], args[-1])
