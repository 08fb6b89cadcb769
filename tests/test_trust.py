"""Records are verified on read: a record whose id is not its configuration's hash, whose final contradicts its
history, whose steps go backwards or whose numbers are out of range is named and skipped by the readers of folders,
and refused by resume; never scored, never counted as done."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

from spamlang import record
from spamlang.errors import SpamLangError
from spamlang.scoring.frames import load_runs
from spamlang.sweeps.plan import recorded_runs
from spamlang.sweeps.runner import pending
from spamlang.sweeps.suite import load
from tests.conftest import assert_user_error
from tests.test_leaderboard import make_record
from tests.test_suite import tiny


def _edit(data: dict, change: str) -> dict:
    data = json.loads(json.dumps(data))
    if change == "lr":
        data["config"]["lr"] = 0.5  # the run id left as it was
    elif change == "final_loss":
        data["final"]["loss"] = 1e308
    elif change == "reversed":
        data["history"] = data["history"][::-1]
    elif change == "repeated_step":
        data["history"][2]["step"] = data["history"][1]["step"]
    elif change == "accuracy":
        data["history"][1]["test_accuracy"] = 1.5
    elif change == "negative_loss":
        data["history"][0]["val_loss"] = -3.0
    elif change == "nan":
        data["final"]["tokens_per_second"] = float("nan")
    elif change == "learned_at":
        data["final"]["steps_to_learn"] = 150
    elif change == "final_steps":
        data["final"]["steps"] = 50
    elif change == "cosine":
        data["final"]["grad_kept_cos"] = 2.0
    return data


CHANGES = {"lr": "is not the hash of its configuration", "final_loss": "$.final.loss = 1e+308 disagrees",
           "reversed": "steps must increase", "repeated_step": "$.history[2].step = 100 does not follow step 100",
           "accuracy": "$.history[1].test_accuracy = 1.5 is outside the allowed range [0, 1]",
           "negative_loss": "$.history[0].val_loss = -3.0 is outside the allowed range [0, inf)",
           "nan": "$.final.tokens_per_second = nan is not a finite number",
           "learned_at": "$.final.steps_to_learn = 150 is not an evaluated step",
           "final_steps": "$.final.steps = 50 is below the last evaluation's step 200",
           "cosine": "$.final.grad_kept_cos = 2.0 is outside the allowed range [-1, 1]"}


def _record_data(**kwargs) -> dict:
    rec = make_record(**kwargs)
    data = rec.to_dict()
    data["final"]["steps"] = 200
    return data


@pytest.mark.parametrize("change", CHANGES)
def test_an_inconsistent_record_is_refused_on_read_naming_the_field(tmp_path, change):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(_edit(_record_data(), change)))
    with pytest.raises(SpamLangError, match="inconsistent run record") as caught:
        record.read(path)
    assert str(path) in str(caught.value) and CHANGES[change] in str(caught.value)


def test_an_untouched_record_and_every_published_one_pass():
    path_data = _record_data()
    assert record.RunRecord.from_json(path_data).run_id == path_data["run_id"]
    results = Path(__file__).resolve().parent.parent / "results"
    for folder in ("smoke", "paper-cpu", "text-cpu"):  # schema 1 and 2, generated and text tasks
        runs = load_runs(results / folder / "runs")
        assert len(runs) == len(list((results / folder / "runs").glob("*.json")))


@pytest.mark.parametrize("change", ["lr", "final_loss", "reversed"])
def test_scoring_names_and_skips_an_inconsistent_record(run_cli, tmp_path, change):
    folder = tmp_path / "runs"
    for seed in range(2):
        record.write(make_record(seed=seed), folder)
    edited = _edit(_record_data(seed=5), change)
    (folder / f"{edited['run_id']}.json").write_text(json.dumps(edited))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(folder)
    assert sorted(runs["seed"]) == [0, 1]
    assert any(edited["run_id"] in str(w.message) and CHANGES[change] in str(w.message) for w in caught)
    r = run_cli("score", folder, "--format", "json")
    assert r.code == 0 and len(json.loads(r.out)) == 1 and json.loads(r.out)[0]["n_seeds"] == 2
    assert f"spamlang: warning: skipped {folder / edited['run_id']}.json: inconsistent run record" in r.err


def test_resume_never_counts_an_edited_record_as_done(run_cli, tmp_path):
    path = tiny(tmp_path, steps=2)
    suite = load(str(path))
    runs_dir = tmp_path / "out" / "runs"
    runs_dir.mkdir(parents=True)
    config = suite.runs[0]
    data = {**_record_data(), "run_id": config.run_id, "config": {**config.to_dict(), "lr": 0.5}}
    target = runs_dir / f"{config.run_id}.json"
    target.write_text(json.dumps(data))
    with pytest.raises(SpamLangError, match="inconsistent run record"):
        pending([config], runs_dir)
    assert recorded_runs(runs_dir) == []  # not a record to calibrate on either
    r = run_cli("run", path, "--out", tmp_path / "out", "--lr-rounds", "0")
    assert_user_error(r, str(target), "not the hash of its configuration", "move it away")
    assert json.loads(target.read_text()) == data  # kept as it is
