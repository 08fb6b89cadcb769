"""Experiment trackers: every evaluation point and the final record reach TensorBoard, W&B (offline) and MLflow (a
SQLite file), read back with each tool's own reader; no network."""
from __future__ import annotations

import json
import math
import struct

import pytest

from spamlang import record
from tests.conftest import assert_user_error
from tests.test_suite import tiny

TRAIN = ("train", "--task", "spam", "--vocab-size", 16, "--d-model", 16, "--steps", 8, "--eval-every", 4,
         "--device", "cpu", "--quiet")


def _record(folder) -> record.RunRecord:
    [path] = folder.glob("*.json")
    return record.read(path)


def _close(a, b) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def test_tensorboard_event_files_hold_every_evaluation_and_the_final_record_of_each_run(run_cli, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, path = tmp_path / "out", tiny(tmp_path, steps=4)
    path.write_text(path.read_text().replace("eval_every = 4", "eval_every = 2"))
    r = run_cli("run", path, "--out", out, "--limit", 2, "--lr-rounds", 0, "--tracker",
                "tensorboard", "--quiet")
    assert r.code == 0, r.err
    runs = {p.stem: record.read(p) for p in (out / "runs").glob("*.json")}
    assert len(runs) == 2 and {p.name for p in (out / "tensorboard").iterdir()} == set(runs)
    for run_id, rec in runs.items():
        events = EventAccumulator(str(out / "tensorboard" / run_id)).Reload()
        assert [p.step for p in rec.history] == [0, 2, 4]
        for name in ("test_loss", "train_loss", "test_accuracy", "val_loss", "grad_kept_cos", "grad_destroyed",
                     "update_cosine"):
            points = [p for p in rec.history if getattr(p, name) is not None]
            assert [e.step for e in events.Scalars(f"eval/{name}")] == [p.step for p in points]
            assert all(_close(e.value, getattr(p, name)) for e, p in zip(events.Scalars(f"eval/{name}"), points))
        [final] = events.Scalars("final/loss")
        assert final.step == 4 and _close(final.value, rec.final.loss)
        assert _close(events.Scalars("final/tokens_per_second")[0].value, rec.final.tokens_per_second)


def _wandb_records(path):
    """The protobuf records of a W&B ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB log
    records in 32 KiB blocks (4-byte checksum, 2-byte length, 1-byte type: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb
    data, block, pos, chunk, out = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            out.append(pb.Record.FromString(chunk))
            chunk = b""
    return out


def test_wandb_offline_run_holds_every_evaluation_and_the_summary(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "runs"
    r = run_cli(*TRAIN, "--out", out, "--tracker", "wandb", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["run_id"] == _record(out).run_id  # stdout holds the record and nothing else
    rec = _record(out)
    [path] = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    records = _wandb_records(path)
    [run] = [r.run for r in records if r.HasField("run")]
    assert run.display_name == rec.run_id
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["vocab_size"] == 16 and config["head"] == "linear"

    def key(item):
        return "/".join(item.nested_key) or item.key
    rows = [{key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    assert [row["_step"] for row in rows] == [p.step for p in rec.history]
    assert all(_close(row["eval/test_loss"], p.test_loss) for row, p in zip(rows, rec.history))
    assert all(_close(row["eval/grad_kept_cos"], p.grad_kept_cos) for row, p in zip(rows, rec.history))
    summary = {key(u): json.loads(u.value_json) for r in records if r.HasField("summary") for u in r.summary.update}
    assert summary["status"] == "ok" and _close(summary["final/loss"], rec.final.loss)
    assert _close(summary["final/accuracy"], rec.final.accuracy)


def test_mlflow_store_holds_every_evaluation_and_the_final_record(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    out = tmp_path / "runs"
    r = run_cli(*TRAIN, "--out", out, "--tracker", "mlflow")
    uri = f"sqlite:///{out / 'mlflow.db'}"  # the default store: a file beside the records
    assert r.code == 0, r.err
    rec = _record(out)
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("spamlang").experiment_id])
    assert run.info.run_name == rec.run_id and run.info.status == "FINISHED"
    assert run.data.params["vocab_size"] == "16" and run.data.tags["status"] == "ok"
    history = client.get_metric_history(run.info.run_id, "eval/test_loss")
    assert sorted(m.step for m in history) == [p.step for p in rec.history]
    assert all(_close(m.value, rec.history[[p.step for p in rec.history].index(m.step)].test_loss) for m in history)
    assert _close(run.data.metrics["final/loss"], rec.final.loss)
    assert _close(run.data.metrics["final/grad_kept_cos"], rec.final.grad_kept_cos)


@pytest.mark.parametrize("tracker,module", [("tensorboard", "tensorboard"), ("wandb", "wandb"),
                                            ("mlflow", "mlflow")])
def test_a_missing_tracker_package_is_one_line_before_any_run(run_cli, tmp_path, monkeypatch, tracker, module):
    import importlib.util
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else found(name, *a))
    for command in (TRAIN + ("--out", tmp_path / "runs"), ("run", tiny(tmp_path), "--out", tmp_path / "out")):
        r = run_cli(*command, "--tracker", tracker)
        assert_user_error(r, f"--tracker {tracker} needs {module}: pip install 'spamlang[{tracker}]'")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()


def test_a_failed_run_is_logged_with_its_status(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import spamlang.training.loop
    from spamlang.sweeps.executors import execute
    from spamlang.training.tracking import TrackerSpec

    def boom(*args, **kwargs):
        raise RuntimeError("boom")
    monkeypatch.setattr(spamlang.training.loop, "train", boom)
    config = {"task": "spam", "vocab_size": 16, "d_model": 16, "steps": 2, "device": "cpu"}
    rec = execute(config, record.SuiteInfo(name="t", version=1, source="t.toml", sweep=()), 1,
                  TrackerSpec("tensorboard", str(tmp_path)))
    assert rec.status == "failed"
    [folder] = (tmp_path / "tensorboard").iterdir()
    events = EventAccumulator(str(folder), size_guidance={"tensors": 0}).Reload()
    [text] = events.Tensors("status/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "failed: RuntimeError: boom"


def test_a_tracker_that_fails_to_finish_fails_the_run_it_logged(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    import spamlang.training.tracking
    from spamlang.sweeps.executors import execute
    from spamlang.training.tracking import TrackerSpec

    def boom(self, rec):
        raise OSError("disk full")
    monkeypatch.setattr(spamlang.training.tracking.TensorBoard, "finish", boom)
    info = record.SuiteInfo(name="t", version=1, source="t.toml", sweep=())
    config = {"task": "spam", "vocab_size": 16, "d_model": 16, "steps": 2, "eval_every": 2, "device": "cpu"}
    rec = execute(config, info, 1, TrackerSpec("tensorboard", str(tmp_path)))
    assert rec.status == "failed" and rec.error == "tracker tensorboard: OSError: disk full" and rec.suite == info


def test_the_command_line_offers_exactly_the_trackers_there_are():
    """The command line names the trackers itself (importing spamlang.training.tracking would bring torch into every
    command's start)."""
    from spamlang.cli.run import run
    from spamlang.training import tracking
    [option] = [p for p in run.params if p.name == "tracker"]
    assert list(option.type.choices) == list(tracking.TRACKERS) == list(tracking._ADAPTERS)
