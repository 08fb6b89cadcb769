"""The task CLI: listing, generation round-trip, bad input, and tasks discovered from outside the package."""
from __future__ import annotations

import hashlib
import json
import textwrap

import numpy as np
import pytest

from spamlang.data.corpus import load
from tests.conftest import assert_user_error

GEN = ["generate", "spam", "--vocab-size", 1000, "--seq-len", 16, "--num-sequences", 100, "--seed", 1]


def test_tasks_json_lists_builtins(run_cli):
    r = run_cli("tasks", "--json")
    assert r.code == 0
    rows = json.loads(r.out)
    assert {"bag", "cycle", "permutation", "shift", "spam", "spam-noisy", "spam-zipf"} <= {x["name"] for x in rows}
    for row in rows:
        assert set(row) >= {"name", "description", "params"} and row["description"]
    bag = next(x for x in rows if x["name"] == "bag")
    assert bag["params"][0]["name"] == "k" and bag["params"][0]["default"] == 8


def test_generate_round_trip(run_cli, tmp_path):
    out = tmp_path / "c"
    r = run_cli(*GEN, "--out", out)
    assert r.code == 0, r.err
    tokens, meta = load(out)
    assert tokens.shape == (100, 16) and tokens.dtype == np.uint16
    assert (tokens == tokens[:, :1]).all()
    assert hashlib.sha256(np.load(out / "tokens.npy").tobytes()).hexdigest() == meta["sha256"]
    assert meta["seed"] == 1 and meta["task"] == "spam" and meta["bayes_loss"] == 0.0 and meta["task_version"] == 1
    again = tmp_path / "d"
    assert run_cli(*GEN, "--out", again).code == 0
    assert (again / "tokens.npy").read_bytes() == (out / "tokens.npy").read_bytes()


def test_generate_in_chunks_equals_one_piece(tmp_path):
    from spamlang import make_task
    from spamlang.data.corpus import generate
    a = generate(make_task("bag"), 300, 8, 1000, 3, tmp_path / "a", chunk_tokens=64, progress=False)
    b = generate(make_task("bag"), 300, 8, 1000, 3, tmp_path / "b", progress=False)
    assert a["sha256"] == b["sha256"] and a["dtype"] == "uint16"


@pytest.mark.parametrize("args,fragment", [
    (["generate", "nope", "-V", 10, "-T", 4, "-n", 2], "unknown task 'nope'"),
    (["generate", "spam", "-V", 1, "-T", 4, "-n", 2], "vocab_size"),
    (["generate", "spam", "-V", 2**31, "-T", 4, "-n", 2], "vocab_size"),
    (["generate", "spam", "-V", 10, "-T", 1, "-n", 2], "seq_len"),
    (["generate", "spam", "-V", 10, "-T", 4, "-n", 0], "num_sequences"),
    (["generate", "bag", "-V", 10, "-T", 4, "-n", 2, "-p", "k=11"], "k=11"),
    (["generate", "bag", "-V", 10, "-T", 4, "-n", 2, "-p", "k=two"], "'k' must be int"),
    (["generate", "bag", "-V", 10, "-T", 4, "-n", 2, "-p", "k"], "KEY=VALUE"),
    (["generate", "spam", "-V", 10, "-T", 4, "-n", 2, "--frobnicate"], "--frobnicate"),
    (["generate", "spam", "-V", "ten", "-T", 4, "-n", 2], "ten"),
])
def test_bad_input_exits_2(run_cli, tmp_path, args, fragment):
    out = tmp_path / "o"
    assert_user_error(run_cli(*args, "--out", out), fragment)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_unwritable_output_is_a_user_error(run_cli, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    assert_user_error(run_cli(*GEN, "--out", blocker / "sub"))


def test_existing_output_needs_force(run_cli, tmp_path):
    out = tmp_path / "c"
    assert run_cli(*GEN, "--out", out).code == 0
    assert_user_error(run_cli(*GEN, "--out", out), "--force")
    assert run_cli(*GEN, "--seed", 2, "--out", out, "--force").code == 0
    assert json.loads((out / "meta.json").read_text())["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    from spamlang import make_task
    from spamlang.data.corpus import generate
    task = make_task("spam")
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("disk on fire")
        return type(task).sample(task, *args, **kwargs)

    object.__setattr__(task, "sample", broken)
    with pytest.raises(RuntimeError):
        generate(task, 10, 4, 100, 0, tmp_path / "c", chunk_tokens=8, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_corpus_is_refused(run_cli, tmp_path):
    from spamlang.errors import SpamLangError
    out = tmp_path / "c"
    run_cli(*GEN, "--out", out)
    np.save(out / "tokens.npy", np.zeros((100, 16), dtype=np.uint16))
    with pytest.raises(SpamLangError, match="sha256"):
        load(out)


TASK_FILE = textwrap.dedent('''
    """A user task: alternate between two symbols."""
    from dataclasses import dataclass
    import torch
    from spamlang import Task, register_task, param

    @register_task
    @dataclass(frozen=True)
    class Alternate(Task):
        """Two random symbols a, b alternating: a b a b ...; positions >= 2 are predictable."""
        name = "alternate-{tag}"
        deterministic = True
        gap: int = param(1, "unused demo parameter", low=1, high=9)

        def sample(self, num_sequences, seq_len, vocab_size, generator, device="cpu", offset=0):
            ab = generator.integers(vocab_size, (num_sequences, 2), device, offset=2 * offset)
            return ab.repeat(1, seq_len)[:, :seq_len].contiguous()

        def predictable_mask(self, seq_len):
            return torch.arange(seq_len) >= 2

        def log_prob(self, tokens, vocab_size):
            lp = torch.where(tokens[:, 2:] == tokens[:, :-2], 0.0, float("-inf")).double()
            return torch.cat([torch.zeros(len(tokens), 2, dtype=torch.float64), lp], dim=1)
''')


def test_external_task_folder_discovered(run_cli, tmp_path, monkeypatch):
    folder = tmp_path / "mytasks"
    folder.mkdir()
    (folder / "alternate.py").write_text(TASK_FILE.replace("{tag}", "env"))
    (folder / "broken.py").write_text("raise ImportError('oops')\n")
    monkeypatch.setenv("SPAMLANG_TASKS_PATH", str(folder))
    from spamlang.task import TASKS
    monkeypatch.setattr(TASKS, "_loaded", False)
    r = run_cli("tasks", "--json")
    assert r.code == 0
    assert "alternate-env" in {x["name"] for x in json.loads(r.out)}
    assert "broken.py" in r.err and "oops" in r.err  # the broken file is named, the others still load
    out = tmp_path / "alt"
    assert run_cli("generate", "alternate-env", "-V", 20, "-T", 6, "-n", 5, "--out", out).code == 0
    tokens, _ = load(out)
    assert (tokens[:, 2:] == tokens[:, :-2]).all()
    assert run_cli("tasks", "validate", "alternate-env").code == 0


def test_tasks_dir_flag(run_cli, tmp_path):
    folder = tmp_path / "t2"
    folder.mkdir()
    (folder / "alternate.py").write_text(TASK_FILE.replace("{tag}", "flag"))
    r = run_cli("tasks", "--tasks-dir", folder)
    assert r.code == 0 and "alternate-flag" in r.out
    assert_user_error(run_cli("tasks", "--tasks-dir", tmp_path / "missing"), "folder")


def test_validate_reports_a_wrong_bayes_loss(run_cli, tmp_path):
    folder = tmp_path / "t3"
    folder.mkdir()
    bad = TASK_FILE.replace("{tag}", "bad").replace("deterministic = True", "deterministic = False") + \
        "\n        def bayes_loss(self, vocab_size, seq_len):\n            return 0.5\n"
    (folder / "bad.py").write_text(bad)
    r = run_cli("tasks", "validate", "alternate-bad", "--tasks-dir", folder)
    assert r.code == 1 and "FAIL  bayes loss" in r.out


def test_every_option_has_help_text():
    import click

    from spamlang.cli import cli

    def bare(command, path):
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from bare(sub, f"{path} {name}")
        else:
            yield from (f"{path} {p.opts[0]}" for p in command.params if isinstance(p, click.Option) and not p.help)
    assert list(bare(cli, "spamlang")) == []
