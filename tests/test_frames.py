"""Run frames: typed columns, NaN for missing, the head label, one row per evaluation, and the public names."""
from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import spamlang
from spamlang import record
from spamlang.heads.base import head_label
from spamlang.scoring.frames import EVAL_TYPES, history, load_runs, python_values
from spamlang.scoring.scorer import score
from tests.records import make_record


def write_runs(folder):
    """A linear run (no rank), two seeds of a lowrank:2 run, and a failed mos run."""
    records = [make_record(task="spam", vocab_size=64, head="linear", losses=(4.0, 2.0, 1.0)),
               *(make_record(task="spam", vocab_size=64, head="lowrank", head_rank=2, seed=s, losses=(4.0, 3.0))
                 for s in (0, 1)),
               make_record(task="spam", vocab_size=64, head="mos", head_params={"components": 2}, status="failed")]
    for rec in records:
        record.write(rec, folder)
    return records


def test_numeric_columns_are_numeric_with_nan_for_missing(tmp_path):
    write_runs(tmp_path)
    df = load_runs(tmp_path).set_index("head")
    assert df["vocab_size"].dtype == "int64" and df["seed"].dtype == "int64" and df["lr"].dtype == "float64"
    assert df["compile"].dtype == bool
    assert df["head_rank"].dtype == "float64" and math.isnan(df.loc["linear", "head_rank"])
    assert df.loc["lowrank", "head_rank"].tolist() == [2.0, 2.0]
    # final metrics as columns; a failed run has none
    assert df["final_loss"].dtype == "float64"
    assert df.loc["linear", "final_loss"] == pytest.approx(1.0)
    assert math.isnan(df.loc["mos", "final_loss"]) and math.isnan(df.loc["mos", "bayes_loss"])
    assert df["deterministic"].dtype == object  # unknown for the failed run: True/False/None
    numeric = set(df.select_dtypes("number").columns)
    assert {"vocab_size", "head_rank", "lr", "final_loss", "final_accuracy", "bayes_loss"} <= numeric
    assert df["final_loss"].describe()["count"] == 3
    assert not df[["lr", "final_loss"]].corr().empty


def test_head_spec_labels_head_rank_and_params(tmp_path):
    write_runs(tmp_path)
    assert sorted(load_runs(tmp_path)["head_spec"]) == ["linear", "lowrank:2", "lowrank:2", "mos(components=2)"]
    assert head_label("gradproj", 8, {}) == "gradproj:8"


def test_python_values_undo_the_typing(tmp_path):
    write_runs(tmp_path)
    df = python_values(load_runs(tmp_path)).set_index("head")
    assert df.loc["linear", "head_rank"] is None and df.loc["mos", "final_loss"] is None
    ranks = df.loc["lowrank", "head_rank"].tolist()
    assert ranks == [2, 2] and all(type(r) is int for r in ranks)
    assert type(df.loc["linear", "vocab_size"]) is int


def test_history_has_one_row_per_evaluation(tmp_path):
    records = write_runs(tmp_path)
    h = history(tmp_path)
    assert len(h) == sum(len(r.history) for r in records) == 3 + 2 + 2  # the failed run has no evaluations
    assert list(h.columns[:2]) == ["run_id", "task"] and {"head_spec", "status", "step", "test_loss"} <= set(h)
    assert h["step"].dtype == "int64" and h["test_loss"].dtype == "float64" and h["tokens"].dtype == "int64"
    linear = h[h["head_spec"] == "linear"]
    assert linear["step"].tolist() == [0, 100, 200] and linear["test_loss"].tolist() == [4.0, 2.0, 1.0]
    # the evaluation's learning rate beside the run's peak setting
    assert "eval_lr" in h and "lr" in h and set(EVAL_TYPES) - {"lr"} <= set(h.columns)
    pd.testing.assert_frame_equal(history(load_runs(tmp_path)), h)


def test_the_scorer_reads_the_typed_frame_and_returns_one(tmp_path):
    write_runs(tmp_path)
    runs = load_runs(tmp_path)
    scored = spamlang.score(runs)
    by_head = scored.set_index("head")
    assert by_head.loc["lowrank", "head_rank"] == 2 and by_head.loc["linear", "head_rank"] is pd.NA
    assert by_head.loc["mos", "verdict"] == "failed"
    dtypes = scored.dtypes
    assert dtypes["head_rank"] == "Int64" and dtypes["vocab_size"] == "int64" and dtypes["n_seeds"] == "int64"
    assert dtypes["loss"] == "float64" and dtypes["floor"] == "float64" and dtypes["lr"] == "float64"
    assert dtypes["budget_limited"] in ("bool", "boolean") and dtypes["verdict"] == "object"
    assert math.isnan(by_head.loc["mos", "loss"])  # the failed run's configuration: NaN, not None
    assert {"loss", "learnability", "n_seeds", "head_rank"} <= set(scored.select_dtypes("number").columns)
    assert not scored.select_dtypes("number").corr().empty
    internal = score(runs)  # the scorer's own form: Python values, None for missing
    assert internal.dtypes.eq(object).all() and internal.set_index("head").loc["linear", "head_rank"] is None
    assert spamlang.format_table(scored) == spamlang.format_table(internal)  # the same values, typed or not
    assert json.loads(spamlang.format_table(scored, "json")) == json.loads(spamlang.format_table(internal, "json"))
    pd.testing.assert_frame_equal(*(pd.read_csv(io.StringIO(spamlang.format_table(frame, "csv")))
                                    for frame in (scored, internal)), check_dtype=False)
    assert "| lowrank:2 " in spamlang.format_table(scored) and "2.0" not in spamlang.format_table(scored, "csv")


def test_public_names_are_listed():
    names = dir(spamlang)
    assert {"train", "load_runs", "history", "score", "format_table", "RunConfig", "make_task"} <= set(names)
    assert all(hasattr(spamlang, name) for name in spamlang.__all__)


def test_the_readme_frames_example_runs(monkeypatch):
    root = Path(__file__).resolve().parent.parent
    (example,) = [b for b in re.findall(r"```python\n(.*?)```", (root / "README.md").read_text(), re.S)
                  if "spamlang.history" in b]
    monkeypatch.chdir(root)
    scope: dict = {}
    exec(example, scope)
    assert {"linear", "lowrank:4", "tied"} <= set(scope["curves"].columns) and scope["curves"].index.name == "step"


def test_value_order_sorts_numpy_numbers_as_numbers():
    """pandas 2 gives numpy integers as group keys, pandas 3 Python ones: both sort 128 < 512 < 2048."""
    from spamlang.scoring.frames import value_order
    values = [np.int64(2048), 512, np.float64(128.0), "bag", None, np.nan]
    assert sorted(values, key=value_order)[:4] == [128.0, 512, 2048, "bag"]


def test_records_read_on_all_cores_give_the_same_frame_and_the_same_warnings(tmp_path, monkeypatch):
    from spamlang.scoring import frames
    write_runs(tmp_path)
    (tmp_path / "broken.json").write_text("{")
    copy = tmp_path / "sub"
    copy.mkdir()
    record.write(make_record(task="spam", vocab_size=64, head="linear", losses=(4.0, 2.0, 1.0)), copy)  # a duplicate

    def read(processes):
        monkeypatch.setattr(frames, "PARALLEL_FILES", 1)
        monkeypatch.setattr(frames, "available_cores", lambda: processes)
        with pytest.warns(RuntimeWarning) as caught:
            runs = load_runs(tmp_path)
        return runs, [str(w.message) for w in caught]

    alone, alone_warnings = read(1)
    forked, forked_warnings = read(2)
    assert len(alone) == 4 and len(alone_warnings) == 2
    pd.testing.assert_frame_equal(alone, forked)
    assert alone_warnings == forked_warnings
