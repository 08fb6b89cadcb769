"""Nothing silently wrong: every number and record is checked, runs are measured against the machine, and task
validation compares the targets with the Bayes loss and predictor."""
from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass

import pytest
import torch

from spamlang import record
from spamlang.config import RunConfig
from spamlang.data.validate import validate
from spamlang.errors import SpamLangError
from spamlang.scoring.frames import load_runs
from spamlang.sweeps.runner import pending, run_suite
from spamlang.sweeps.suite import load
from spamlang.task import Targets, Task
from spamlang.training import resources
from spamlang.training.model import LanguageModel
from tests.conftest import assert_user_error
from tests.test_leaderboard import make_record, write_all
from tests.test_suite import TINY, tiny


# -- numbers from the command line ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "0", "-0.1", "x"])
def test_score_tolerance_must_be_finite_and_positive(run_cli, tmp_path, value):
    write_all(tmp_path, [make_record()])
    assert_user_error(run_cli("score", tmp_path, "--tolerance", value), "--tolerance")


@pytest.mark.parametrize("args,fragment", [
    (["tasks", "validate", "bag", "-p", "k=4", "-p", "k=5"], "--param k is given twice (k=4 and k=5)"),
    (["train", "--task", "spam", "--vocab-size", 16, "--head", "mos", "--head-param", "components=2",
      "--head-param", "components=3"], "--head-param components is given twice"),
    (["tasks", "validate", "bag", "-n", 0], "num_sequences=0 is outside the allowed range [2, 1e+07]"),
    (["tasks", "validate", "bag", "-n", 1], "num_sequences=1 is outside the allowed range [2, 1e+07]"),
    (["train", "--task", "spam", "--vocab-size", 16, "--lr", "nan"], "lr"),
    (["train", "--task", "spam", "--vocab-size", 16, "--lr", "inf"], "lr"),
])
def test_numbers_are_checked(run_cli, args, fragment):
    assert_user_error(run_cli(*args), fragment)


# -- suites ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("old,new,fragment", [
    ('exclude = [{ head = "lowrank:2", vocab_size = 16 }]', 'exclude = [{ hed = "linear" }]', "unknown key 'hed'"),
    ('exclude = [{ head = "lowrank:2", vocab_size = 16 }]', 'exclude = [{ task_params = { k = 2 } }]',
     "'task_params.k' is not set by the grid"),
    ('exclude = [{ head = "lowrank:2", vocab_size = 16 }]', 'exclude = [{ task_params = 3 }]', "must be a table"),
    ('name = "tiny"', 'name = "../elsewhere"', "suite.name '../elsewhere'"),
    ('name = "tiny"', 'name = "tiny"\nversion = 0', "suite.version must be >= 1"),
    ('name = "tiny"', 'name = "tiny"\nsweep = [1]', "suite.sweep must be a list of setting names"),
])
def test_suite_keys_are_checked(run_cli, tmp_path, old, new, fragment):
    path = tmp_path / "s.toml"
    text = TINY.format(steps=3).replace("{{", "{").replace("}}", "}")
    assert old in text
    path.write_text(text.replace(old, new))
    assert_user_error(run_cli("run", path, "--out", tmp_path / "out"), fragment)
    assert not (tmp_path / "out").exists()


def test_exclude_with_task_params_set_by_the_grid_still_works(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(TINY.format(steps=3).replace('task = "spam"', 'task = "bag"\ntask_params = { k = [2, 3] }')
                    .replace('exclude = [{ head = "lowrank:2", vocab_size = 16 }]',
                             'exclude = [{ task_params = { k = 3 } }]'))
    assert {c.task_params["k"] for c in load(str(path)).runs} == {2}


# -- records ---------------------------------------------------------------------------------------------------------
def nan_record() -> dict:
    """A record file's content with status ok whose losses are not numbers (written as null)."""
    data = make_record().to_dict()
    data["history"] = [{**p, "test_loss": math.nan, "val_loss": math.nan} for p in data["history"]]
    data["final"] = {**data["final"], "loss": math.nan, "val_loss": math.nan}
    return data


def test_a_record_of_status_ok_with_non_finite_losses_is_refused_by_the_type():
    rec = make_record()
    with pytest.raises(ValueError, match=r"non-finite or missing metrics \(final.loss"):
        dataclasses.replace(rec, final=dataclasses.replace(rec.final, loss=math.nan))
    with pytest.raises(ValueError, match=r"history\[1\].test_loss"):
        dataclasses.replace(rec, history=(rec.history[0], dataclasses.replace(rec.history[1], test_loss=None)))
    diverged = dataclasses.replace(rec, status="diverged", final=dataclasses.replace(rec.final, loss=math.nan),
                                   history=(*rec.history[:-1], dataclasses.replace(rec.history[-1], test_loss=None)))
    assert record.RunRecord.from_json(diverged.to_json()).status == "diverged"  # a diverged run may have them


def test_a_record_of_status_ok_with_non_finite_losses_is_reported_not_scored(tmp_path):
    write_all(tmp_path, [make_record(seed=1)])
    (tmp_path / "nan.json").write_text(record.strict_json(nan_record()))
    with pytest.raises(SpamLangError, match="nan.json: .*non-finite or missing metrics"):
        record.read(tmp_path / "nan.json")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = load_runs(tmp_path)
    assert list(runs["seed"]) == [1]
    assert any("non-finite or missing metrics" in str(w.message) for w in caught)


@pytest.mark.parametrize("make", [
    lambda data: {**data, "schema": "spamlang.run/3"},
    lambda data: {**data, "status": "ok", "history": [{**p, "val_loss": None} for p in data["history"]]},
])
def test_a_resumed_run_neither_counts_nor_overwrites_a_record_it_cannot_read(tmp_path, make):
    suite = load(str(tiny(tmp_path)))
    runs_dir = tmp_path / "out" / "runs"
    config = suite.runs[0]
    data = make({**make_record().to_dict(), "run_id": config.run_id, "config": config.to_dict()})
    runs_dir.mkdir(parents=True)
    path = runs_dir / f"{config.run_id}.json"
    path.write_text(json.dumps(data))
    before = path.read_text()
    with pytest.raises(SpamLangError, match=f"{config.run_id}.json.*kept as it is"):
        pending(suite.runs, runs_dir)
    with pytest.raises(SpamLangError, match=f"{config.run_id}.json"):
        run_suite(suite, tmp_path / "out", progress=False)
    assert path.read_text() == before and len(list(runs_dir.glob("*.json"))) == 1


# -- resources -------------------------------------------------------------------------------------------------------
def test_parameter_part_of_the_estimate_is_the_real_parameter_count():
    config = RunConfig(task="spam", vocab_size=300, d_model=16, head="lowrank", head_rank=3)
    real = sum(p.numel() for p in LanguageModel(config).parameters())
    assert resources.parameter_count(config) == real
    assert resources.run_memory(config)["parameters"] == 2 * 16 * real  # weights, gradients, two AdamW moments; a copy


def test_memory_estimate_grows_with_the_vocabulary():
    small, big = (resources.run_memory(RunConfig(task="spam", vocab_size=v, d_model=32)) for v in (256, 262_144))
    assert big["total"] > 30 * small["total"] and big["logits"] > small["logits"]
    assert small["total"] == small["parameters"] + small["activations"] + small["logits"] + small["evaluation"]


def test_available_memory_is_known_on_this_machine():
    free = resources.available_memory("cpu")
    assert free is None or free > 0


def test_a_run_that_cannot_fit_is_refused_with_the_numbers(run_cli, monkeypatch):
    r = run_cli("train", "--task", "spam", "--vocab-size", 2_000_000_000, "--d-model", 64)
    assert_user_error(r, "needs about", "TB", "available")
    monkeypatch.setattr(resources, "available_memory", lambda *a: 50_000_000)
    r = run_cli("train", "--task", "spam", "--vocab-size", 256, "--d-model", 32, "--steps", 1)
    assert_user_error(r, "needs about 58.5 MB", "evaluation 2.1 MB", "cpu has 50.0 MB available")


def test_cuda_memory_is_read_from_the_device(monkeypatch):
    """The CPU twin of the CUDA path: free device memory comes from torch.cuda.mem_get_info."""
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (10 ** 9, 8 * 10 ** 10))
    assert resources.available_memory("cuda", 0) == 10 ** 9
    with pytest.raises(SpamLangError, match="cuda has 1.0 GB available"):
        resources.check_run(RunConfig(task="spam", vocab_size=2 ** 24, d_model=64), "cuda", 0)
    resources.check_run(RunConfig(task="spam", vocab_size=256), "cuda", 0)


def test_workers_side_by_side_are_counted(tmp_path, monkeypatch):
    config = load(str(tiny(tmp_path))).runs[0]
    need = resources.run_memory(config)["total"]
    monkeypatch.setattr(resources, "available_memory", lambda *a: int(2 * need / resources.HEADROOM) + 1)
    resources.check_run(config, copies=2)
    with pytest.raises(SpamLangError, match="x 3 runs side by side"):
        resources.check_run(config, copies=3)


@pytest.mark.parametrize("error", [
    MemoryError(),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
                 "to allocate 512000000000 bytes. Error code 12 (Cannot allocate memory)"),
    torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
])
def test_allocator_errors_become_one_line(run_cli, monkeypatch, error):
    import spamlang.training.loop

    def fail(*args, **kwargs):
        raise error
    monkeypatch.setattr(spamlang.training.loop, "train", fail)
    r = run_cli("train", "--task", "spam", "--vocab-size", 16, "--d-model", 8, "--steps", 1)
    assert_user_error(r, "out of memory")
    assert len(r.err.strip().splitlines()) == 1
    if "512000000000" in str(error):
        assert "512.0 GB" in r.err


def test_other_runtime_errors_are_not_hidden(run_cli, monkeypatch):
    import spamlang.training.loop
    monkeypatch.setattr(spamlang.training.loop, "train", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli("train", "--task", "spam", "--vocab-size", 16, "--d-model", 8, "--steps", 1)


# -- tasks validate: targets against the Bayes loss and predictor ---------------------------------------------------
@dataclass(frozen=True)
class Repeat(Task):
    """Deterministic: the first symbol repeated (like spam); ``targets`` picks right or uniform (wrong) targets."""
    name = "repeat-test"
    deterministic = True
    targets: str = "right"

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        first = generator.integers(vocab_size, (num_sequences, 1), device, offset=offset)
        return first.repeat(1, seq_len)

    def log_prob(self, tokens, vocab_size):  # the README's float32 pattern
        lp = torch.where(tokens[:, 1:] == tokens[:, :1], 0.0, float("-inf")).double()
        return torch.cat([torch.zeros(len(tokens), 1, dtype=torch.float64), lp], dim=1)

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        if self.targets == "uniform":
            probs = torch.full((vocab_size, vocab_size), 1.0 / vocab_size, dtype=torch.float64)
        else:
            probs = torch.eye(vocab_size, dtype=torch.float64)
        return Targets(probs, torch.full((vocab_size,), 1.0 / vocab_size, dtype=torch.float64), True)


@dataclass(frozen=True)
class Uniform(Task):
    """I.i.d. uniform tokens; log_prob in float32 (rounded), Bayes loss log V, optionally off by ``error`` nats."""
    name = "uniform-test"
    error: float = 0.0
    collision: str = "right"

    def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
        return generator.integers(vocab_size, (num_sequences, seq_len), device, offset=offset * seq_len)

    def bayes_loss(self, vocab_size, seq_len):
        return math.log(vocab_size) + self.error

    def log_prob(self, tokens, vocab_size):
        lp = torch.full(tokens.shape, -math.log(vocab_size), dtype=torch.float32).double()
        lp[:, 0] = 0
        return lp

    def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
        probs = torch.full((1, vocab_size), 1.0 / vocab_size, dtype=torch.float64)
        if self.collision == "peaked":  # uniform over half the symbols: another distribution than the predictor's
            probs = torch.zeros(1, vocab_size, dtype=torch.float64)
            probs[0, : vocab_size // 2] = 2.0 / vocab_size
        return Targets(probs, torch.ones(1, dtype=torch.float64), True)


def checks(task):
    return {c.name: c for c in validate(task, 64, 8, 400)}


def test_right_targets_pass_in_float32():
    assert all(c.ok for c in checks(Repeat()).values())
    result = checks(Uniform())
    assert all(c.ok for c in result.values()), result


def test_uniform_targets_of_a_deterministic_task_fail_with_the_difference():
    result = checks(Repeat(targets="uniform"))
    assert not result["targets"].ok and not result["agreement"].ok and result["bayes loss"].ok
    assert "weighted entropy 4.15888308 vs Bayes loss 0: difference 4.16" in result["targets"].detail
    assert "difference" in result["agreement"].detail


def test_a_wrong_bayes_loss_fails_with_both_numbers_and_the_difference():
    result = checks(Uniform(error=1e-3))
    assert not result["bayes loss"].ok and not result["targets"].ok
    assert "Monte-Carlo 4.15888309 vs exact Bayes loss 4.15988308" in result["bayes loss"].detail  # float32 log V
    assert "difference -0.001" in result["bayes loss"].detail


def test_targets_that_disagree_with_the_predictor_fail():
    result = checks(Uniform(collision="peaked", error=-math.log(2)))  # entropy log(V/2) matches this Bayes loss
    assert result["targets"].ok and not result["agreement"].ok
    assert "0.0156249998 vs targets' collision probability 0.03125" in result["agreement"].detail


def test_the_readme_task_and_suite_examples_work(tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    (tmp_path / "mytasks").mkdir()
    sticky = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "class Sticky" in b)
    (tmp_path / "mytasks" / "sticky.py").write_text(sticky)
    (tmp_path / "mine.toml").write_text(re.findall(r"```toml\n(.*?)```", readme, re.S)[0])
    validate_cmd = [sys.executable, "-m", "spamlang.cli", "tasks", "validate", "sticky", "--tasks-dir",
                    str(tmp_path / "mytasks"), "-n", "1000"]
    done = subprocess.run(validate_cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "passed all 7 checks" in done.stdout, done.stdout + done.stderr
    code = (f"from spamlang.task import TASKS; TASKS.load_folders([{str(tmp_path / 'mytasks')!r}]); "
            f"from spamlang.sweeps.suite import load; print(len(load({str(tmp_path / 'mine.toml')!r}).runs))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "60", done.stderr
    # its budget unit is what a sequence shows: the distinct symbols of a sample, not its predictable positions
    code = (f"from spamlang.task import TASKS, make_task; from spamlang.rng import Rng; "
            f"TASKS.load_folders([{str(tmp_path / 'mytasks')!r}])\n"
            f"for q in (0.5, 0.9):\n t = make_task('sticky', {{'q': q}}); x = t.sample(2000, 16, 4096, Rng(0))\n"
            f" print(t.symbols_per_sequence(16), sum(len(set(r.tolist())) for r in x) / len(x))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    for line in done.stdout.splitlines() or [done.stderr]:
        unit, distinct = map(float, line.split())
        assert abs(unit - distinct) <= 1, (unit, distinct)
