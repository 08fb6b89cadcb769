"""The scorer on hand-made run records: verdicts, lr selection, statistics, data limits, loading and output."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from spamlang import record
from spamlang.config import RunConfig
from spamlang.errors import ConfigError, SpamLangError
from spamlang.floors import CACHE_NAME, FloorCache, expressivity_floor
from spamlang.frames import load_runs
from spamlang.record import RunRecord
from spamlang.scorer import learnability, score
from spamlang.stats import mean_ci, t_quantile
from spamlang.tables import format_table
from spamlang.task import make_task
from tests.records import make_record as build_record

#: one in-memory floor cache for the whole file: each estimated floor is fitted once
CACHE = FloorCache()


def make_record(task="spam", task_params=None, vocab_size=64, head="linear", head_rank=None, d_model=32, lr=1e-3,
                seed=0, accuracies=(0.0, 0.5, 1.0), **kwargs) -> RunRecord:
    """A run record with a test-loss curve ``losses`` (evaluations every 100 steps from step 0); see
    :func:`tests.records.make_record`."""
    return build_record(task=task, task_params=task_params or {}, vocab_size=vocab_size, head=head,
                               head_rank=head_rank, d_model=d_model, lr=lr, seed=seed, accuracies=accuracies,
                               **kwargs)


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


def test_learned_needs_most_seeds(tmp_path):
    failing = dict(losses=(4.0, 3.0, 2.0), accuracies=(0.0, 0.1, 0.2))
    two = scored(tmp_path / "a", *seeds(2), make_record(seed=2, **failing)).iloc[0]
    one = scored(tmp_path / "b", make_record(seed=0), *[make_record(seed=s, **failing) for s in (1, 2)]).iloc[0]
    assert two["verdict"] == "learned" and two["n_learned"] == 2
    assert one["verdict"] == "optimization-limited" and one["n_learned"] == 1
    assert one["steps_to_learn"] is None  # the median seed never learned


def test_optimization_limited(tmp_path):
    row = scored(tmp_path, *seeds(head="lowrank", head_rank=2, losses=(4.0, 3.5, 3.0),
                                  accuracies=(0.0, 0.05, 0.1))).iloc[0]
    assert row["verdict"] == "optimization-limited"
    assert row["expressivity_gap"] == 0.0 and row["optimization_gap"] == pytest.approx(3.0)


def bag_floor():
    task, config = make_task("bag", {"k": 8}), dict(task="bag", task_params={"k": 8}, vocab_size=32, d_model=8,
                                                     head="lowrank", head_rank=1)
    floor = expressivity_floor(task, 32, 16, "lowrank", 8, 1, {}, None, cache=CACHE)
    return floor["floor"], task.bayes_loss(32, 16), config


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
    row = scored(tmp_path, *seeds(**config, losses=(3.5, floor + 0.5, floor + 0.3), accuracies=(0, 0.1, 0.1))).iloc[0]
    assert row["verdict"] == "mixed"
    assert row["optimization_gap"] == pytest.approx(0.3)


def test_diverged(tmp_path):
    row = scored(tmp_path, *seeds(2, status="diverged"), make_record(seed=2, losses=(4.0, 3.0))).iloc[0]
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
    published = Path(record.__file__).parent / record.SCHEMA_FILE
    assert json.loads(published.read_text()) == record.json_schema(), "regenerate: python -m spamlang.record"


def test_the_published_results_load():
    folder = Path(__file__).parent.parent / "results" / "smoke" / "runs"
    df = load_runs(folder)
    assert len(df) == len(list(folder.glob("*.json"))) and set(df["status"]) == {"ok"}


def test_spamlang_score_keeps_the_floor_cache_beside_the_records(run_cli, tmp_path):
    floor, _, config = bag_floor()
    runs(tmp_path, *seeds(**config, losses=(4.0, 3.0)))
    assert run_cli("score", tmp_path).code == 0
    cached = json.loads((tmp_path / CACHE_NAME).read_text())
    assert [v["floor"] for v in cached.values()] == [pytest.approx(floor)]


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
    assert rows[0]["floor"] == df.iloc[0]["floor"] and rows[0]["task_params"] == {"k": 8}
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
    assert "bag(k=8)" in body[0] and "lowrank:1" in body[0] and "~" in body[0]
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
    from spamlang.harness import train
    tiny = dict(d_model=16, layers=1, batch_size=32, eval_sequences=64, diag_tokens=64, device="cpu")
    spam = dict(task="spam", seq_len=8, steps=60, eval_every=20, **tiny)
    bag = dict(task="bag", task_params={"k": 8}, vocab_size=32, head="lowrank", head_rank=1, seq_len=16, steps=150,
               eval_every=50, lr=1e-2, **tiny)
    configs = [*(RunConfig(vocab_size=32, lr=1e-2, seed=s, **spam) for s in (0, 1)),
               *(RunConfig(vocab_size=1024, head="lowrank", head_rank=2, lr=lr, seed=s, **spam)
                 for s in (0, 1) for lr in (3e-3, 1e-2)),
               *(RunConfig(vocab_size=1024, head="gradproj", head_rank=2, lr=1e-2, seed=s, **spam) for s in (0, 1)),
               *(RunConfig(seed=s, **bag) for s in (0, 1))]
    for config in configs:
        record.write(train(config), tmp_path)
    df = score(load_runs(tmp_path), cache=FloorCache(tmp_path / CACHE_NAME))
    got = {(r["task"], r["vocab_size"], r["head"]): r for _, r in df.iterrows()}
    learned, limited, bag_row = got["spam", 32, "linear"], got["spam", 1024, "lowrank"], got["bag", 32, "lowrank"]
    assert learned["verdict"] == "learned" and learned["floor_method"] == "analytic"
    assert limited["verdict"] == "optimization-limited" and limited["optimization_gap"] > 1.0
    assert limited["lr_tried"] == [3e-3, 1e-2] and limited["n_seeds"] == 2
    gradproj = got["spam", 1024, "gradproj"]  # full-rank forward, rank-2 gradient: limited like lowrank rank 2
    assert gradproj["verdict"] == "optimization-limited" and gradproj["floor"] == learned["floor"] == 0
    assert abs(gradproj["optimization_gap"] - limited["optimization_gap"]) < 0.25 * limited["optimization_gap"]
    assert bag_row["verdict"] == "expressivity-limited" and bag_row["floor_method"] == "estimated"
    assert bag_row["expressivity_gap"] > 0.3 and abs(bag_row["optimization_gap"]) <= 0.05
    for row in (learned, limited, bag_row):
        assert 0 < row["grad_destroyed_start"] < 1 and 0 < row["grad_destroyed_end"] < 1
    assert (tmp_path / CACHE_NAME).is_file()
    assert json.loads(format_table(df, "json"))[0]["verdict"] == df.iloc[0]["verdict"]
