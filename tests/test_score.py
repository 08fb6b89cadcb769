"""The scorer on hand-made run records: verdicts, lr selection, noise, trends, baselines, loading and output."""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from spamlang import record
from spamlang.config import RunConfig
from spamlang.errors import ConfigError, SpamLangError
from spamlang.publishing.tables import format_table
from spamlang.record import RunRecord, schema
from spamlang.scoring.floors import CACHE_NAME, FloorCache, FloorSpec, expressivity_floor
from spamlang.scoring.frames import load_runs
from spamlang.scoring.scorer import learnability, score
from spamlang.scoring.stats import mean_ci, t_quantile
from spamlang.system import atomic
from spamlang.task import make_task
from tests.records import make_record as build_record

#: one in-memory floor cache for the whole file: each estimated floor is fitted once
CACHE = FloorCache()


def make_record(task="spam", task_params=None, vocab_size=64, head="linear", head_rank=None, d_model=32, lr=1e-3,
                seed=0, accuracies=(0.0, 0.5, 1.0), **kwargs) -> RunRecord:
    """A run record with a test-loss curve ``losses`` (evaluations every 100 steps from step 0); see
    :func:`tests.records.make_record`."""
    return build_record(task=task, task_params=task_params or {}, vocab_size=vocab_size, head=head,
                        head_rank=head_rank, d_model=d_model, lr=lr, seed=seed, accuracies=accuracies, **kwargs)


def runs(tmp_path, *records) -> pd.DataFrame:
    for rec in records:
        record.write(rec, tmp_path)
    return load_runs(tmp_path)


def scored(tmp_path, *records, **kwargs) -> pd.DataFrame:
    return score(runs(tmp_path, *records), cache=CACHE, **kwargs)


def seeds(n=3, **kwargs):
    return [make_record(seed=s, **kwargs) for s in range(n)]


# -- verdicts ----------------------------------------------------------------------------------------------------------
def test_learned(tmp_path):
    row = scored(tmp_path, *seeds()).iloc[0]
    assert row["verdict"] == "learned"
    assert row["floor"] == 0.0 and row["floor_method"] == "analytic"
    assert row["n_seeds"] == 3 and row["n_learned"] == 3 and row["steps_to_learn"] == 200


def test_scoring_shows_a_bar_over_configurations_on_request(tmp_path, capsys):
    scored(tmp_path, *seeds(), *seeds(vocab_size=128), progress=True)
    err = capsys.readouterr().err
    assert "scoring:" in err and "0/2 [" in err  # the total: one configuration per V
    scored(tmp_path / "quiet", *seeds(), progress=False)
    assert capsys.readouterr().err == ""


def test_learned_is_judged_on_the_mean_gap_at_the_end_with_its_noise(tmp_path):
    """Learned asks for evidence: the gap's one-sided 95% upper bound below the tolerance (absence of evidence is
    not learning); a gap whose bounds straddle the tolerance is undetermined."""
    one_slow = scored(tmp_path / "a", *seeds(3), make_record(seed=3, losses=(4.0, 1.0, 0.5))).iloc[0]
    assert one_slow["bayes_gap"] == pytest.approx(0.1325) and one_slow["bayes_gap_se"] == pytest.approx(0.1225)
    assert one_slow["verdict"] == "undetermined" and one_slow["n_learned"] == 3  # 0.13 ± 1.645 × 0.12 holds 0.05
    assert one_slow["evidence"].startswith("undetermined (within the noise of the tolerance) for lr = 0.001")
    near = scored(tmp_path / "b", *[make_record(seed=s, losses=(4.0, 1.0, 0.29 + 0.01 * s)) for s in range(3)])
    assert near.iloc[0]["verdict"] == "optimization-limited" and near.iloc[0]["n_learned"] == 0
    assert near.iloc[0]["bayes_gap"] == pytest.approx(0.3) and near.iloc[0]["steps_to_learn"] is None


FLAT = dict(losses=(4.0, 3.2, 3.0, 3.0, 3.0), accuracies=(0.0, 0.05, 0.1, 0.1, 0.1))
FLAT_HEAD = dict(head="lowrank", head_rank=2, losses=(4.0, 3.0, 3.0), accuracies=(0.0, 0.1, 0.1))
FALLING = dict(losses=(4.0, 3.5, 3.0, 2.5, 2.02), accuracies=(0.0, 0.05, 0.1, 0.15, 0.2))


def test_optimization_limited(tmp_path):
    row = scored(tmp_path, *seeds(head="lowrank", head_rank=2, **FLAT)).iloc[0]
    assert row["verdict"] == "optimization-limited" and not row["budget_limited"]
    assert row["expressivity_gap"] == 0.0 and row["optimization_gap"] == pytest.approx(3.0)
    # spam: one symbol per sequence, so 400 steps x 64 sequences / V = 64 is 400 examples per symbol
    assert row["train_steps"] == 400 and row["train_examples_per_symbol"] == 400
    assert row["evidence"] == "not learned for lr = 0.001 within 400 steps / 400 examples per symbol; one lr tried"


def test_the_budget_is_read_from_the_record_where_it_states_it(tmp_path):
    stated = {"steps": 400, "tokens": 409600, "examples_per_symbol": 12.5}
    row = scored(tmp_path, *seeds(head="lowrank", head_rank=2, measured=stated, **FLAT)).iloc[0]
    assert (row["train_steps"], row["train_tokens"], row["train_examples_per_symbol"]) == (400, 409600, 12.5)
    assert row["evidence"].endswith("within 400 steps / 12 examples per symbol; one lr tried")


def test_a_still_improving_curve_is_budget_limited(tmp_path):
    row = scored(tmp_path, *seeds(head="lowrank", head_rank=2, **FALLING)).iloc[0]
    assert row["verdict"] == "budget-limited" and row["budget_limited"]
    assert row["val_slope"] == pytest.approx(-4.9, abs=0.1) and row["val_slope_se"] < 0.2  # nats per 1,000 steps


def test_a_constant_predictor_is_no_learning(tmp_path):
    uniform = math.log(64)
    row = scored(tmp_path / "a", *seeds(losses=(uniform,) * 3, accuracies=(1 / 64,) * 3)).iloc[0]
    assert row["verdict"] == "no-learning" and row["uniform_loss"] == pytest.approx(uniform)
    floor, bayes, config = bag_floor(k=8, vocab_size=32, rank=1)  # a rank-1 head's floor is just below uniform
    assert math.log(32) - 0.05 < floor < math.log(32)
    vacuous = scored(tmp_path / "b", *seeds(**config, losses=(3.5, floor + 0.01, floor))).iloc[0]
    assert vacuous["verdict"] == "no-learning"  # not "expressivity-limited": the floor itself is trivial


def test_the_unigram_baseline_is_used_where_recorded(tmp_path):
    measured = {"test_unigram_loss": 3.0, "test_unigram_gap_se": 0.01, "test_loss_se": 0.01}
    row = scored(tmp_path, *seeds(head="lowrank", head_rank=2, measured=measured, **FLAT)).iloc[0]
    assert row["verdict"] == "no-learning" and row["unigram_loss"] == 3.0


def test_learned_then_lost_is_not_learned(tmp_path):
    row = scored(tmp_path, *seeds(losses=(4.0, 0.01, 3.0), accuracies=(0.0, 1.0, 0.2))).iloc[0]
    assert row["verdict"] != "learned" and row["learned_then_lost"]
    assert row["n_learned"] == 0 and row["steps_to_learn"] is None
    assert "+lost" in format_table(pd.DataFrame([row]), "md")


def test_a_gap_inside_its_uncertainty_does_not_change_the_verdict(tmp_path):
    noisy = scored(tmp_path / "a", *seeds(losses=(4.0, 1.0, 0.08), measured={"test_loss_se": 0.1})).iloc[0]
    precise = scored(tmp_path / "b", *seeds(losses=(4.0, 1.0, 0.08), measured={"test_loss_se": 0.001})).iloc[0]
    assert noisy["bayes_gap"] == precise["bayes_gap"] == pytest.approx(0.08)
    assert noisy["bayes_gap_se"] == pytest.approx(0.1 / math.sqrt(3))
    # 0.08 ± 1.645 × 0.058 holds the tolerance: no evidence either way (it used to count as learned)
    assert noisy["verdict"] == "undetermined" and precise["verdict"] == "optimization-limited"


def test_an_expressivity_gap_inside_the_floors_uncertainty_does_not_count(tmp_path, monkeypatch):
    import spamlang.scoring.scorer as scorer
    floor = {"floor": 0.04, "floor_se": 0.02, "method": "estimated"}
    monkeypatch.setattr(scorer, "expressivity_floor", lambda *a, **k: floor)
    row = scored(tmp_path / "a", *seeds(head="lowrank", head_rank=2, **FLAT)).iloc[0]
    assert row["expressivity_gap"] == pytest.approx(0.04) and row["expressivity_gap_se"] == pytest.approx(0.02)
    assert row["verdict"] == "optimization-limited"  # not "mixed"
    floor.update(floor=0.08, floor_se=0.1)  # a floor this uncertain (SE above half the tolerance) cannot split a gap
    assert scored(tmp_path / "b", *seeds(head="lowrank", head_rank=2, **FLAT)).iloc[0]["verdict"] == "undetermined"


def test_gaps_are_measured_against_the_bayes_loss_on_the_same_tokens(tmp_path):
    kw = dict(task="spam-noisy", vocab_size=64)
    bayes = make_task("spam-noisy").bayes_loss(64, RunConfig(task="spam", vocab_size=2).seq_len)
    measured = {"test_bayes_loss": bayes - 0.2, "test_bayes_gap_se": 0.005}
    row = scored(tmp_path / "a", *seeds(**kw, losses=(5.0, 3.0, bayes - 0.19), measured=measured)).iloc[0]
    assert row["bayes_gap"] == pytest.approx(0.01) and row["test_bayes_loss"] == pytest.approx(bayes - 0.2)
    assert row["verdict"] == "learned" and not row["floor_error"]
    below = {"test_bayes_loss": bayes, "test_bayes_gap_se": 0.005}
    wrong = scored(tmp_path / "b", *seeds(**kw, losses=(5.0, 3.0, bayes - 0.1), measured=below)).iloc[0]
    assert wrong["floor_error"] and "!floor" in format_table(pd.DataFrame([wrong]), "md")


def test_the_scale_gap_splits_the_optimization_gap(tmp_path, monkeypatch):
    import spamlang.scoring.scorer as scorer
    asked = []

    def floor_at_scale(spec, scale, cache=None):
        asked.append((spec.task.name, spec.vocab_size, spec.head, spec.rank, scale))
        return {"floor": 2.0, "floor_se": 0.0, "method": "estimated"}

    monkeypatch.setattr(scorer, "floor_at_scale", floor_at_scale)
    runs = [make_record(seed=s, head="lowrank", head_rank=2, measured={"logit_scale": scale}, **FLAT)
            for s, scale in enumerate((9.0, 10.0, 30.0))]
    row = scored(tmp_path, *runs).iloc[0]
    assert asked == [("spam", 64, "lowrank", 2, 10.0)]  # the median reached scale
    assert (row["logit_scale"], row["scale_floor"], row["scale_gap"]) == (10.0, 2.0, 2.0)
    assert row["direction_gap"] == pytest.approx(1.0)
    assert " scale gap " in format_table(pd.DataFrame([row]), "md")


def bag_floor(k=4, vocab_size=16, rank=2):
    """(floor, Bayes loss, config) of a bag task and a low-rank head; by default one with the floor well between the
    Bayes loss (1.79) and the uniform predictor's (2.77)."""
    task = make_task("bag", {"k": k})
    config = dict(task="bag", task_params={"k": k}, vocab_size=vocab_size, d_model=8, head="lowrank", head_rank=rank)
    floor = expressivity_floor(FloorSpec(task, vocab_size, 16, "lowrank", 8, rank, {}, None), cache=CACHE)
    return floor["floor"], task.bayes_loss(vocab_size, 16), config


def test_expressivity_limited(tmp_path):
    floor, bayes, config = bag_floor()
    assert floor > bayes + 0.2
    row = scored(tmp_path, *seeds(**config, losses=(3.5, floor + 0.1, floor + 0.01), accuracies=(0, 0.1, 0.1))).iloc[0]
    assert row["verdict"] == "expressivity-limited" and row["floor_method"] == "estimated"
    assert row["floor"] == pytest.approx(floor)
    assert row["expressivity_gap"] == pytest.approx(floor - bayes)
    assert row["optimization_gap"] == pytest.approx(0.01)


def test_mixed(tmp_path):
    floor, _, config = bag_floor()
    row = scored(tmp_path, *seeds(**config, losses=(3.5, floor + 0.2, floor + 0.1), accuracies=(0, 0.1, 0.1))).iloc[0]
    assert row["verdict"] == "mixed"
    assert row["optimization_gap"] == pytest.approx(0.1)


def test_diverged(tmp_path):
    row = scored(tmp_path, *seeds(2, status="diverged"), make_record(seed=2, losses=(4.0, 3.0), steps=200)).iloc[0]
    assert row["verdict"] == "diverged"
    assert (row["n_diverged"], row["n_ok"]) == (2, 1)


def test_failed(tmp_path):
    row = scored(tmp_path, *seeds(status="failed")).iloc[0]
    assert row["verdict"] == "failed" and row["n_failed"] == 3
    assert "out of memory" in row["error"]
    assert math.isnan(row["loss"])


def test_a_failed_seed_joins_its_configuration(tmp_path):
    df = scored(tmp_path, *seeds(2), make_record(seed=2, status="failed"))
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["n_seeds"], row["n_ok"], row["n_failed"]) == (3, 2, 1)
    assert row["verdict"] == "learned"


# -- selection on val, numbers from test -------------------------------------------------------------------------------
def test_lr_is_chosen_on_val_and_reported_on_test(tmp_path):
    good_val = seeds(lr=1e-3, losses=(4.0, 2.0, 1.5), val_losses=(4.0, 2.0, 1.0), accuracies=(0, 0.5, 0.6))
    good_test = seeds(lr=1e-2, losses=(4.0, 2.0, 0.5), val_losses=(4.0, 2.0, 1.2), accuracies=(0, 0.5, 0.9))
    row = scored(tmp_path, *good_val, *good_test).iloc[0]
    assert row["lr"] == 1e-3 and row["lr_tried"] == [1e-3, 1e-2]
    assert row["loss"] == pytest.approx(1.5) and row["val_loss"] == pytest.approx(1.0)
    assert row["accuracy"] == pytest.approx(0.6)
    assert row["n_runs"] == 6 and row["n_seeds"] == 3


@pytest.mark.parametrize("best, edge, mark", [(3e-2, "high", "0.03↑"), (1e-3, "low", "0.001↓"), (1e-2, None, "0.01 ")])
def test_a_chosen_lr_at_the_edge_of_the_grid_is_flagged(tmp_path, best, edge, mark):
    records = [make_record(lr=lr, seed=s, val_losses=(4.0, 2.0, 1.0 if lr == best else 1.5), **FLAT_HEAD)
               for lr in (1e-3, 1e-2, 3e-2) for s in (0, 1)]
    row = scored(tmp_path, *records).iloc[0]
    assert row["lr"] == best and row["lr_at_edge"] == edge
    assert mark in format_table(pd.DataFrame([row]), "md")
    if edge:
        assert row["evidence"].endswith(f"best lr at the range's {'upper' if edge == 'high' else 'lower'} edge")
    assert row["evidence"].startswith("not learned for lr ∈ [0.001, 0.03] within 200 steps")


def test_one_lr_tried_is_an_edge_and_extension_rounds_are_shown(tmp_path):
    row = scored(tmp_path / "a", *seeds(suite={"name": "s", "sweep": ["lr"], "lr_round": 0})).iloc[0]
    assert row["lr_at_edge"] == "only" and row["lr_rounds"] == 0
    records = [make_record(lr=lr, seed=0, suite={"name": "s", "sweep": ["lr"], "lr_round": r})
               for lr, r in ((1e-3, 0), (3e-3, 1), (9e-3, 2))]
    row = scored(tmp_path / "b", *records).iloc[0]
    assert row["lr_rounds"] == 2 and "(3) +2r" in format_table(pd.DataFrame([row]), "md")


def test_a_setting_with_a_diverged_seed_loses_the_selection(tmp_path):
    unstable = [make_record(lr=1e-2, seed=0, status="diverged", losses=(4.0, 0.5), val_losses=(4.0, 0.1))] + \
               [make_record(lr=1e-2, seed=s, losses=(4.0, 0.5), val_losses=(4.0, 0.1)) for s in (1, 2)]
    row = scored(tmp_path, *unstable, *seeds(lr=1e-3, losses=(4.0, 1.0), val_losses=(4.0, 1.0))).iloc[0]
    assert row["lr"] == 1e-3 and row["n_diverged"] == 0


def test_other_swept_fields_from_the_argument_or_the_suite(tmp_path):
    recs = [*seeds(warmup=0, losses=(4.0, 2.0)), *seeds(warmup=10, losses=(4.0, 1.0))]
    assert len(scored(tmp_path / "a", *recs)) == 2  # warmup is a configuration field by default
    row = scored(tmp_path / "b", *recs, sweep=["warmup"]).iloc[0]
    assert row["warmup"] == 10 and row["warmup_tried"] == [0, 10]
    suite = {"name": "s", "sweep": ["lr", "warmup"]}
    recs = [*seeds(warmup=0, losses=(4.0, 2.0), suite=suite), *seeds(warmup=10, losses=(4.0, 1.0), suite=suite)]
    assert scored(tmp_path / "c", *recs).iloc[0]["warmup"] == 10


def test_grouping_by_chosen_fields(tmp_path):
    recs = [*seeds(vocab_size=64), *seeds(vocab_size=128)]
    assert len(scored(tmp_path, *recs)) == 2
    df = score(load_runs(tmp_path), by=["task", "head"], cache=CACHE)
    assert len(df) == 1 and df.iloc[0]["n_seeds"] == 6
    with pytest.raises(ConfigError, match="nope"):
        score(load_runs(tmp_path), by=["nope"], cache=CACHE)


# -- statistics --------------------------------------------------------------------------------------------------------
def test_t_quantiles():
    assert t_quantile(1) == pytest.approx(12.7062, abs=1e-3)
    assert t_quantile(2) == pytest.approx(4.3027, abs=1e-3)
    assert t_quantile(10) == pytest.approx(2.2281, abs=1e-3)
    assert t_quantile(1000) == pytest.approx(1.9623, abs=1e-3)


def test_confidence_interval(tmp_path):
    assert mean_ci([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.3027 / math.sqrt(3)), abs=1e-4)
    assert math.isnan(mean_ci([1.0])[1])
    recs = [make_record(seed=s, losses=(4.0, x), accuracies=(0, a)) for s, x, a in
            ((0, 1.0, 0.2), (1, 2.0, 0.4), (2, 3.0, 0.6))]
    row = scored(tmp_path, *recs).iloc[0]
    assert row["loss"] == pytest.approx(2.0) and row["loss_ci"] == pytest.approx(4.3027 / math.sqrt(3), abs=1e-4)
    assert row["accuracy_ci"] == pytest.approx(0.2 * 4.3027 / math.sqrt(3), abs=1e-4)


def test_learnability_on_hand_checked_curves(tmp_path):
    assert learnability([4.0, 2.0, 1.0, 0.0], 0.0) == pytest.approx(1 - (0.5 + 0.25 + 0.0) / 3)
    assert learnability([5.0, 3.0, 1.0], 1.0) == pytest.approx(0.75)
    assert learnability([1.0, 2.0], 0.0) == 0.0  # got worse: clipped
    assert learnability([4.0, math.nan], 0.0) == 0.0
    assert learnability([1.0, 1.0], 1.0) == 1.0  # started at the floor
    assert math.isnan(learnability([4.0], 0.0))
    recs = [make_record(seed=0, losses=(4.0, 2.0, 1.0, 0.0), accuracies=(0, 0, 0, 0)),
            make_record(seed=1, losses=(4.0, 4.0, 4.0, 4.0), accuracies=(0, 0, 0, 0))]
    assert scored(tmp_path, *recs).iloc[0]["learnability"] == pytest.approx((0.75 + 0.0) / 2)


def test_gradient_diagnostics_at_start_and_end(tmp_path):
    row = scored(tmp_path, *seeds(destroyed=(0.99, 0.5))).iloc[0]
    assert row["grad_destroyed_start"] == pytest.approx(0.99) and row["grad_destroyed_end"] == pytest.approx(0.5)
    assert row["grad_kept_cos_end"] == pytest.approx(math.sqrt(0.75))
    assert row["grad_baseline_start"] == row["grad_baseline_end"] == pytest.approx(0.7)


def test_data_limited(tmp_path):
    shortfall = dict(head="lowrank", head_rank=2, losses=(4.0, 2.0), accuracies=(0.0, 0.6))
    row = scored(tmp_path / "a", *seeds(coverage=0.6, accuracy_seen=0.98, **shortfall)).iloc[0]
    assert row["verdict"] == "optimization-limited" and row["data_limited"]
    assert row["coverage"] == pytest.approx(0.6)
    assert not scored(tmp_path / "b", *seeds(coverage=0.6, accuracy_seen=0.7, **shortfall)).iloc[0]["data_limited"]
    assert not scored(tmp_path / "c", *seeds(coverage=1.0, accuracy_seen=0.98, **shortfall)).iloc[0]["data_limited"]


# -- loading -----------------------------------------------------------------------------------------------------------
def test_load_runs_reads_records_recursively_and_skips_the_floor_cache(tmp_path):
    record.write(make_record(seed=0), tmp_path / "a")
    record.write(make_record(seed=1), tmp_path / "b" / "c")
    (tmp_path / CACHE_NAME).write_text("{}")
    df = load_runs(tmp_path)
    assert sorted(df["seed"]) == [0, 1]
    assert math.isnan(df.iloc[0]["head_rank"])  # missing is NaN in the typed frame


def test_load_runs_errors(tmp_path):
    with pytest.raises(SpamLangError, match="not found"):
        load_runs(tmp_path / "missing")
    with pytest.raises(SpamLangError, match="no run records"):
        load_runs(tmp_path)
    (tmp_path / "broken.json").write_text("{\"schema\": ")
    with pytest.raises(SpamLangError, match="broken.json"):
        load_runs(tmp_path)


@pytest.mark.parametrize("name,content,message", [
    ("broken.json", "{\"schema\": ", "not readable as JSON"),
    ("foreign.json", json.dumps({"hello": 1}), "not a SpamLang run record"),
    ("future.json", json.dumps({"schema": "spamlang.run/99"}), "not supported"),
    ("partial.json", json.dumps({"schema": record.SCHEMA, "run_id": "x"}), "malformed run record: \\$: 'config'"),
])
def test_one_bad_file_among_good_ones_is_named_and_skipped(tmp_path, name, content, message):
    record.write(make_record(seed=0), tmp_path)
    (tmp_path / name).write_text(content)
    with pytest.warns(RuntimeWarning, match=message) as caught:
        df = load_runs(tmp_path)
    assert len(df) == 1
    assert any(name in str(w.message) for w in caught)


def test_a_second_copy_of_a_run_is_reported_and_skipped(tmp_path):
    rec = make_record()
    record.write(rec, tmp_path / "a")
    record.write(rec, tmp_path / "b")
    with pytest.warns(RuntimeWarning, match="second record"):
        assert len(load_runs(tmp_path)) == 1


def test_a_malformed_nested_field_is_named_with_its_file(tmp_path):
    data = make_record().to_dict()
    data["history"][1]["test_loss"] = "low"
    (tmp_path / "nested.json").write_text(json.dumps(data))
    with pytest.raises(SpamLangError, match=r"nested\.json: malformed run record: \$\.history\[1\]\.test_loss: 'low'"):
        record.read(tmp_path / "nested.json")
    data = make_record().to_dict()
    data["config"]["lr"] = -1.0
    with pytest.raises(SpamLangError, match=r"x\.json: malformed run record: \$\.config\.lr: -1\.0"):
        record.RunRecord.from_json(data, "x.json")


def test_records_round_trip_and_the_previous_schema_migrates():
    rec = make_record()
    assert record.RunRecord.from_json(rec.to_json()) == rec
    failed = make_record(status="failed")
    assert record.RunRecord.from_json(failed.to_json()) == failed
    old = {**rec.to_dict(), "schema": "spamlang.run/1"}  # version 1 repeated the status in final
    old["final"] = {**old["final"], "status": "ok"}
    assert record.RunRecord.from_json(old) == rec
    old_failed = {**failed.to_dict(), "schema": "spamlang.run/1", "final": {"status": "failed"}}
    assert record.RunRecord.from_json(old_failed) == failed


def test_the_published_schema_file_matches_the_record_types():
    published = Path(schema.__file__).parent / schema.SCHEMA_FILE
    assert json.loads(published.read_text()) == schema.json_schema(), "regenerate: python -m spamlang.record.schema"


def test_the_published_results_load():
    folder = Path(__file__).parent.parent / "results" / "smoke" / "runs"
    df = load_runs(folder)
    assert len(df) == len(list(folder.glob("*.json"))) and set(df["status"]) == {"ok"}


def test_spamlang_score_keeps_the_floor_cache_in_the_user_cache_and_never_writes_into_the_folder(
        run_cli, tmp_path, monkeypatch):
    floor, _, config = bag_floor()
    folder = tmp_path / "runs"
    runs(folder, *seeds(**config, losses=(4.0, 3.0)))
    before = sorted(p.name for p in folder.iterdir())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("SPAMLANG_CACHE_DIR", raising=False)
    assert run_cli("score", folder).code == 0
    assert sorted(p.name for p in folder.iterdir()) == before
    cached = json.loads((tmp_path / "xdg" / "spamlang" / CACHE_NAME).read_text())
    assert [v["floor"] for v in cached.values()] == [pytest.approx(floor)]
    assert run_cli("score", folder, "--cache", tmp_path / "mine.json").code == 0  # an explicit cache file
    assert json.loads((tmp_path / "mine.json").read_text()).keys() == cached.keys()


def test_spamlang_score_reads_a_read_only_folder_and_the_cache_shipped_with_it(run_cli, tmp_path, monkeypatch):
    import os
    import stat
    _, _, config = bag_floor()
    suite = tmp_path / "suite"
    runs(suite / "runs", *seeds(**config, losses=(4.0, 3.0)))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert run_cli("score", suite / "runs").code == 0
    shipped = json.loads((tmp_path / "xdg" / "spamlang" / CACHE_NAME).read_text())
    shipped = {k: {**v, "floor": 0.123456} for k, v in shipped.items()}  # a marked copy, shipped beside runs/
    (suite / CACHE_NAME).write_text(json.dumps(shipped))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "fresh"))
    write_bytes = atomic.write_bytes

    def read_only(path, *args, **kwargs):  # as a read-only mount refuses (chmod alone does not stop root)
        if suite in Path(path).parents:
            raise PermissionError(13, "Read-only file system", str(path))
        return write_bytes(path, *args, **kwargs)
    monkeypatch.setattr(atomic, "write_bytes", read_only)
    for path in (suite / "runs", suite):
        os.chmod(path, stat.S_IRUSR | stat.S_IXUSR)
    try:
        r = run_cli("score", suite / "runs", "--format", "json")
    finally:
        for path in (suite, suite / "runs"):
            os.chmod(path, 0o755)
    assert r.code == 0, r.err
    assert [row["floor"] for row in json.loads(r.out)] == [pytest.approx(0.123456)]
    assert not (tmp_path / "fresh").exists()  # nothing new to cache


# -- output ------------------------------------------------------------------------------------------------------------
def table(tmp_path):
    floor, _, config = bag_floor()
    return scored(tmp_path, *seeds(), *seeds(head="lowrank", head_rank=2, lr=1e-2, losses=(4.0, 3.0)),
                  *seeds(**config, losses=(4.0, floor + 0.01)))


def test_json_has_every_field_and_the_same_numbers(tmp_path):
    df = table(tmp_path)
    rows = json.loads(format_table(df, "json"))
    assert [r["verdict"] for r in rows] == ["expressivity-limited", "learned", "optimization-limited"]  # sorted
    assert set(rows[0]) == set(df.columns)
    assert rows[0]["floor"] == df.iloc[0]["floor"] and rows[0]["task_params"] == {"k": 4}
    assert rows[1]["loss_ci"] is not None and rows[1]["steps_to_learn"] == 200
    assert rows[2]["steps_to_learn"] is None and rows[2]["lr_tried"] == [0.01]


def test_csv_has_every_column(tmp_path):
    df = table(tmp_path)
    back = pd.read_csv(io.StringIO(format_table(df, "csv")))
    assert list(back.columns) == list(df.columns)
    assert list(back["verdict"]) == list(df["verdict"])


def test_markdown_reads_well(tmp_path):
    text = format_table(table(tmp_path), "md")
    lines = text.splitlines()
    header, rule, *body = lines[:5]
    assert len({len(line) for line in (header, rule, *body)}) == 1  # aligned columns
    for cell in ("task", "head", "loss", "floor", "verdict"):
        assert f" {cell} " in header
    assert "bag(k=4)" in body[0] and "lowrank:2" in body[0] and "~" in body[0]
    assert "V" not in header.split("|")  # vocab_size is the same in every row: not shown
    with pytest.raises(ConfigError, match="format"):
        format_table(table(tmp_path / "x"), "xml")


# -- end to end --------------------------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    """Tiny models train fastest on one thread (and far faster than on two contended ones)."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_trained_runs_get_the_right_verdicts(tmp_path, one_thread):
    from spamlang.training.loop import train
    tiny = dict(d_model=16, layers=1, batch_size=32, eval_sequences=64, diag_tokens=64, device="cpu")
    spam = dict(task="spam", seq_len=8, steps=100, eval_every=20, **tiny)
    bag = dict(task="bag", task_params={"k": 4}, vocab_size=16, head="lowrank", head_rank=2, seq_len=16, steps=200,
               eval_every=50, lr=3e-2, **tiny)
    configs = [*(RunConfig(vocab_size=32, lr=3e-2, seed=s, **spam) for s in (0, 1)),
               *(RunConfig(vocab_size=1024, head="lowrank", head_rank=2, lr=lr, seed=s, **spam)
                 for s in (0, 1) for lr in (3e-3, 1e-2)),
               *(RunConfig(vocab_size=1024, head="gradproj", head_rank=2, lr=1e-2, seed=s, **spam) for s in (0, 1)),
               *(RunConfig(seed=s, **bag) for s in (0, 1))]
    for config in configs:
        record.write(train(config), tmp_path)
    # tiny budgets: the bag run ends ~0.07 nats above its floor
    df = score(load_runs(tmp_path), tolerance=0.1, cache=FloorCache(tmp_path / CACHE_NAME))
    got = {(r["task"], r["vocab_size"], r["head"]): r for _, r in df.iterrows()}
    learned, limited, bag_row = got["spam", 32, "linear"], got["spam", 1024, "lowrank"], got["bag", 16, "lowrank"]
    assert learned["verdict"] == "learned" and learned["floor_method"] == "analytic"
    assert limited["verdict"] in ("optimization-limited", "budget-limited") and limited["optimization_gap"] > 1.0
    assert (limited["verdict"] == "budget-limited") == limited["budget_limited"]
    assert limited["lr_tried"] == [3e-3, 1e-2] and limited["n_seeds"] == 2 and limited["lr_at_edge"] == "high"
    assert limited["evidence"].startswith("not learned for lr ∈ [0.003, 0.01] within 100 steps")
    # the floor at the logit scale the runs reached explains part of the gap: weights that have not grown
    assert limited["scale_gap"] == limited["scale_floor"] > 0.1
    gradproj = got["spam", 1024, "gradproj"]  # full-rank forward, rank-2 gradient: far from learned like lowrank:2
    assert gradproj["verdict"] != "learned" and gradproj["floor"] == learned["floor"] == 0
    assert gradproj["optimization_gap"] > 0.5 * limited["optimization_gap"]
    assert bag_row["verdict"] == "expressivity-limited" and bag_row["floor_method"] == "estimated"
    assert bag_row["expressivity_gap"] > 0.5 and abs(bag_row["optimization_gap"]) <= 0.1
    assert bag_row["uniform_loss"] - bag_row["loss"] > 0.1  # it learned something: the floor is not vacuous
    for row in (learned, limited, bag_row):
        assert 0 < row["grad_destroyed_start"] < 1 and 0 < row["grad_destroyed_end"] < 1
    assert (tmp_path / CACHE_NAME).is_file()
    assert json.loads(format_table(df, "json"))[0]["verdict"] == df.iloc[0]["verdict"]


def test_a_failure_shows_what_the_larger_budget_showed(tmp_path):
    suite = {"name": "s", "sweep": ["lr"], "budget_round": 0}
    extended = {**suite, "budget_round": 1}
    base = dict(task="spam", vocab_size=64, batch_size=16, examples_per_symbol=8)
    records = [*seeds(head="lowrank", head_rank=2, losses=(4.0, 3.0), suite=suite, **base),
               *seeds(head="lowrank", head_rank=2, suite=extended, **{**base, "examples_per_symbol": 32}),
               *seeds(head="linear", losses=(4.0, 3.0), suite=suite, **base),
               *seeds(head="linear", losses=(4.0, 2.0), suite=extended, **{**base, "examples_per_symbol": 32}),
               *seeds(head="tied", suite=suite, **base)]
    table = scored(tmp_path, *records)
    cell = {(row["head"], row["examples_per_symbol"]): row["extended_budget"] for _, row in table.iterrows()}
    assert cell[("lowrank", 8)] == "learned at 4× budget (32 examples/symbol)"
    assert cell[("linear", 8)].startswith("not learned at 4× budget (32 examples/symbol): ")
    assert cell[("tied", 8)] is None and cell[("lowrank", 32)] is None  # learned; itself the larger budget
    assert list(table["budget_round"]).count(1) == 2
    text = format_table(table, "md")
    assert "learned at 4× budget (32 examples/symbol)" in text and "at larger budget:" in text
    assert "at larger budget" not in format_table(scored(tmp_path / "b", *records[:3]), "md")
    from spamlang.publishing.ranking import own_budget
    assert sorted(own_budget(table)["head"]) == ["linear", "lowrank", "tied"]  # the ranking's rows


def test_the_time_to_learn_is_a_kaplan_meier_median_read_at_the_fastest_lr(tmp_path):
    """Two lrs: 0.01 learns at step 100 in every seed, 0.001 at 200 with a lower final val loss. The loss columns
    read 0.001, the time columns 0.01; one seed of 0.01 not learned by its cap is censored, not dropped."""
    fast = [make_record(lr=1e-2, seed=s, losses=(4.0, 0.01, 0.01), val_losses=(4.0, 0.02, 0.02)) for s in (0, 1)]
    fast.append(make_record(lr=1e-2, seed=2, losses=(4.0, 1.0, 0.5), val_losses=(4.0, 1.0, 0.5)))
    slow = [make_record(lr=1e-3, seed=s, losses=(4.0, 1.0, 0.01), val_losses=(4.0, 1.0, 0.001)) for s in range(3)]
    row = scored(tmp_path, *fast, *slow).iloc[0]
    assert row["lr"] == 1e-3 and row["time_lr"] == 1e-2
    assert (row["steps_to_learn"], row["n_learned"]) == (100, 2)  # S(100) = 1/3 <= 1/2 with the third censored at 200
    assert row["steps_to_learn_high"] is None or row["steps_to_learn_high"] >= 100
    cell = format_table(pd.DataFrame([row]), "md")
    assert re.search(r"\| 100 \[\d+–(\d+|∞)\] @0\.01 \(2/3\) \|", cell), cell
