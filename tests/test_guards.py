"""Every number checked and every size admitted before work starts, on one path for the command line, suites and
--dry-run; what used to be a traceback is one line and exit status 2."""
from __future__ import annotations

import importlib.util
import sys
import time
import types

import pytest
import torch

from spamlang.config import MAX_RUN_FLOPS, MAX_STEPS, RunConfig, max_steps
from spamlang.errors import ConfigError
from spamlang.sweeps.suite import MAX_RUNS, load
from tests.conftest import assert_user_error
from tests.test_suite import tiny

TRAIN = ["train", "--task", "spam", "--vocab-size", 16, "--d-model", 8, "--eval-sequences", 8, "--diag-tokens", 8,
         "-q", "--steps", 2]


def suite(tmp_path, defaults: str = "", grid: str = "", meta: str = "", name="s.toml"):
    """A one-grid suite file of tiny spam runs, with extra lines in each section."""
    path = tmp_path / name
    path.write_text(f'[suite]\nname = "s"\n{meta}\n[defaults]\nd_model = 8\nlayers = 1\nseq_len = 4\nbatch_size = 8\n'
                    f'eval_sequences = 8\ndiag_tokens = 8\ndevice = "cpu"\n{defaults}\n[[grid]]\ntask = "spam"\n'
                    f'vocab_size = 16\nseed = [0, 1]\n{grid}\n')
    return path


# -- required options ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,missing", [(["train"], "--task"), (["train", "--task", "spam"], "--vocab-size"),
                                          (["train", "--vocab-size", "16"], "--task")])
def test_train_without_its_required_options_is_one_line(run_cli, args, missing):
    assert_user_error(run_cli(*args), f"Missing option '{missing}'")


# -- RunConfig itself ------------------------------------------------------------------------------------------------
def test_run_config_refuses_a_head_spec_whose_rank_disagrees_with_head_rank():
    assert RunConfig(task="spam", vocab_size=16, d_model=8, head="lowrank:2").head_rank == 2
    assert RunConfig(task="spam", vocab_size=16, d_model=8, head="lowrank:2", head_rank=2).head == "lowrank"
    same = RunConfig(task="spam", vocab_size=16, d_model=8, head="lowrank", head_rank=2)
    assert RunConfig(task="spam", vocab_size=16, d_model=8, head="lowrank:2").run_id == same.run_id
    with pytest.raises(ConfigError, match=r"head 'lowrank:2' gives rank 2 but head_rank is 4"):
        RunConfig(task="spam", vocab_size=16, d_model=8, head="lowrank:2", head_rank=4)
    with pytest.raises(ConfigError, match="NAME or NAME:RANK"):
        RunConfig(task="spam", vocab_size=16, head="lowrank:x")


def test_run_config_refuses_steps_beside_examples_per_symbol():
    with pytest.raises(ConfigError, match=r"give steps or examples_per_symbol, not both \(steps=1000"):
        RunConfig(task="spam", vocab_size=16, steps=1000, examples_per_symbol=4).resolve()
    with pytest.raises(ConfigError, match="not both"):
        RunConfig.from_user({"task": "spam", "vocab_size": 16, "steps": 300, "examples_per_symbol": 4})
    resolved = RunConfig(task="spam", vocab_size=64, batch_size=8, examples_per_symbol=4).resolve()
    assert resolved.steps == 32
    assert RunConfig.from_dict(resolved.to_dict()).resolve() == resolved  # a record's config: steps it gave


@pytest.mark.parametrize("settings", [{"examples_per_symbol": 1e30}, {"steps": MAX_STEPS + 1},
                                      {"vocab_size": 2 ** 20, "d_model": 4096, "batch_size": 4096, "steps": 10 ** 8}])
def test_run_config_refuses_absurd_work_naming_the_cap(settings):
    config = {"task": "spam", "vocab_size": 16, **settings}
    with pytest.raises(ConfigError, match=r"steps.*allowed range \[1, "):
        RunConfig(**config).resolve()


def test_the_step_cap_follows_from_the_work_threshold():
    small = RunConfig(task="spam", vocab_size=16, d_model=8)
    big = RunConfig(task="spam", vocab_size=2 ** 20, d_model=4096, batch_size=4096)
    assert max_steps(small) == MAX_STEPS
    from spamlang.system.threads import step_flops
    assert max_steps(big) == int(MAX_RUN_FLOPS // step_flops(big)) < MAX_STEPS


@pytest.mark.parametrize("args,fragments", [
    (["--examples-per-symbol", "1e30"], ["examples_per_symbol=1e+30", "allowed range [1, 1e+09]", "1e+21"]),
    (["--examples-per-symbol", "4", "--steps", "3"], ["give steps or examples_per_symbol, not both"]),
    (["--head", "lowrank:2", "--head-rank", "4"], ["gives rank 2 but head_rank is 4"]),
    (["--eval-sequences", "1000000000"], ["needs about", "evaluation", "available"]),
    (["--out", "/"], ["root of the file system"]),
])
def test_train_refuses_before_any_work(run_cli, tmp_path, args, fragments):
    started = time.perf_counter()
    r = run_cli(*TRAIN[:-2], "--out", tmp_path / "runs", *args)
    assert_user_error(r, *fragments)
    assert time.perf_counter() - started < 30 and not (tmp_path / "runs").exists()


# -- suites: the same path ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("defaults,grid,meta,fragments", [
    ("", 'head = "lowrank:2"\nhead_rank = 4', "", ["gives rank 2 but head_rank is 4"]),
    ("steps = 10\nexamples_per_symbol = 4", "", "", ["give steps or examples_per_symbol, not both"]),
    ("steps = 300\nexamples_per_symbol = 4", "", "", ["not both"]),
    ("examples_per_symbol = 1e30", "", "", ["allowed range [1, 1e+09]"]),
    ("", "", 'sweep = ["seed"]', ["suite.sweep cannot name 'seed'", "replicates"]),
    ("", "", 'sweep = ["task", "lr"]', ["suite.sweep cannot name 'task'"]),
    ("", "", 'sweep = ["lr", "weight_decay"]', ["every run has weight_decay=0.0", "nothing to choose"]),
])
def test_a_suite_is_as_strict_as_the_command_line(run_cli, tmp_path, defaults, grid, meta, fragments):
    path = suite(tmp_path, defaults, grid, meta)
    for args in (["run", path, "--out", tmp_path / "out"], ["run", path, "--dry-run"]):
        assert_user_error(run_cli(*args), *fragments)
    assert not (tmp_path / "out").exists()


def test_a_swept_setting_with_values_is_accepted(tmp_path):
    path = suite(tmp_path, grid="weight_decay = [0.0, 0.1]", meta='sweep = ["lr", "weight_decay"]')
    assert load(str(path)).sweep == ("lr", "weight_decay")


def test_a_huge_grid_is_counted_and_refused_before_any_run_is_built(run_cli, tmp_path):
    axes = "\n".join(f"{key} = [{', '.join(str(v) for v in values)}]" for key, values in [
        ("lr", [0.001 * (i + 1) for i in range(10)]), ("warmup", range(10)), ("eval_every", range(1, 11)),
        ("weight_decay", [0.1 * i for i in range(10)]), ("grad_clip", [0.5 * (i + 1) for i in range(10)]),
        ("steps", range(1, 11))])
    path = tmp_path / "big.toml"
    path.write_text(f'[suite]\nname = "big"\n[defaults]\nd_model = 8\n[[grid]]\ntask = "spam"\nvocab_size = 16\n'
                    f'{axes}\n')
    for args in (["run", path, "--dry-run"], ["run", path, "--out", tmp_path / "out"]):
        started = time.perf_counter()
        r = run_cli(*args)
        assert r.code == 2 and time.perf_counter() - started < 20
    r = run_cli("run", path, "--dry-run")
    assert_user_error(r, "1,000,000 runs", "training FLOPs", f"above the allowed {MAX_RUNS:,} runs per suite")


def test_dry_run_refuses_what_the_run_refuses(run_cli, tmp_path):
    path = tiny(tmp_path, steps=2)
    for value in ("inf", "nan", "0.5"):
        assert_user_error(run_cli("run", path, "--dry-run", "--extend-budget", value), "--extend-budget")
    assert_user_error(run_cli("run", path, "--dry-run", "--device", "tpu"), "device")
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "leaderboard.md").write_text("my notes\n")
    assert_user_error(run_cli("run", path, "--dry-run", "--out", tmp_path / "board"), "leaderboard.md",
                      "not written by")
    assert run_cli("run", path, "--dry-run", "--extend-budget", "2").code == 0


def test_a_board_that_would_replace_a_users_file_is_refused_before_any_run(run_cli, tmp_path):
    path, out = tiny(tmp_path, steps=2), tmp_path / "board"
    out.mkdir()
    (out / "leaderboard.csv").write_text("mine\n")
    started = time.perf_counter()
    assert_user_error(run_cli("run", path, "--out", out, "--lr-rounds", "0"), "leaderboard.csv")
    assert time.perf_counter() - started < 30
    assert sorted(p.name for p in out.iterdir()) == ["leaderboard.csv"]  # no runs folder: nothing trained


# -- sizes of the other commands -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,fragment", [(10_000_000_000, "allowed range [2, 1e+07]"), (1, "allowed range [2, "),
                                        (5_000_000, "needs about")])
def test_tasks_validate_refuses_a_sample_it_cannot_hold(run_cli, n, fragment):
    args = ["tasks", "validate", "spam", "-n", n] + (["-T", 100_000] if n == 5_000_000 else [])
    assert_user_error(run_cli(*args), fragment)


# -- trackers and extras, before the first run ----------------------------------------------------------------------
def test_wandb_without_a_login_is_refused_before_any_run(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    path = tiny(tmp_path, steps=2)
    r = run_cli("run", path, "--out", tmp_path / "out", "--tracker", "wandb")
    assert_user_error(r, "--tracker wandb: not logged in", "WANDB_MODE=offline")
    assert not (tmp_path / "out" / "runs").exists() or not list((tmp_path / "out" / "runs").glob("*.json"))
    assert_user_error(run_cli(*TRAIN, "--out", tmp_path / "t", "--tracker", "wandb"), "not logged in")
    assert not (tmp_path / "t").exists()
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run_cli("run", path, "--dry-run", "--tracker", "wandb").code == 0


def test_wandb_out_of_reach_is_refused_in_seconds_not_minutes(run_cli, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.perf_counter()
    assert_user_error(run_cli("run", tiny(tmp_path, steps=2), "--dry-run", "--tracker", "wandb"), "cannot reach")
    assert time.perf_counter() - started < 30


@pytest.mark.parametrize("uri", ["bogus://nowhere", "http://127.0.0.1:9"])
def test_an_mlflow_uri_that_does_not_work_is_refused_before_any_run(run_cli, tmp_path, monkeypatch, uri):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    started = time.perf_counter()
    assert_user_error(run_cli("run", tiny(tmp_path, steps=2), "--out", tmp_path / "out", "--tracker", "mlflow"),
                      "--tracker mlflow", uri)
    assert_user_error(run_cli(*TRAIN, "--out", tmp_path / "t", "--tracker", "mlflow"), "--tracker mlflow")
    assert time.perf_counter() - started < 60 and not (tmp_path / "t").exists()


def _without(monkeypatch, *modules):
    """As if ``modules`` were not installed."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in modules else find_spec(name, *a))
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)


def test_the_text_task_without_its_extra_is_one_line(run_cli, tmp_path, monkeypatch):
    _without(monkeypatch, "tokenizers", "gensim")
    r = run_cli("train", "--task", "text", "--vocab-size", 300, "--steps", 1, "--out", tmp_path / "runs")
    assert_user_error(r, "tokenizers", "pip install 'spamlang[text]'")
    path = tmp_path / "text.toml"
    path.write_text('[suite]\nname = "t"\n[[grid]]\ntask = "text"\nvocab_size = 300\nsteps = 1\n')
    assert_user_error(run_cli("run", path, "--dry-run"), "tokenizers")


def test_a_missing_optional_library_anywhere_is_one_line(run_cli, monkeypatch):
    import spamlang.training.loop

    def needs_gensim(*args, **kwargs):
        import gensim  # noqa: F401
    monkeypatch.setitem(sys.modules, "gensim", None)
    monkeypatch.setattr(spamlang.training.loop, "train", needs_gensim)
    assert_user_error(run_cli(*TRAIN), "optional library gensim", "pip install 'spamlang[text]'")


# -- measure ----------------------------------------------------------------------------------------------------------
def _checkpoint(tmp_path):
    folder = tmp_path / "tiny-gpt2"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2", "vocab_size": 16, "n_embd": 4}')
    (tmp_path / "t.txt").write_text("some text\n")
    return folder


@pytest.mark.parametrize("device,fragment", [("tpu", "--device must be cpu, cuda[:N] or mps, got 'tpu'"),
                                             ("cuda:x", "got 'cuda:x'"), ("auto", "got 'auto'")]
                         + ([] if torch.cuda.is_available() else [("cuda", "not available on this machine")]))
def test_measure_refuses_a_device_before_loading_anything(run_cli, tmp_path, device, fragment):
    folder = _checkpoint(tmp_path)
    r = run_cli("measure", folder, "--text", tmp_path / "t.txt", "--device", device, "--out", tmp_path / "m")
    assert_user_error(r, fragment)


def test_measure_refuses_a_checkpoint_with_a_non_finite_head(tmp_path, monkeypatch):
    from spamlang.errors import SpamLangError
    from spamlang.measure import checkpoint

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.lm_head = torch.nn.Embedding(16, 4), torch.nn.Linear(4, 16, bias=False)
            with torch.no_grad():
                self.lm_head.weight[3, 1] = float("nan")
            self.config = types.SimpleNamespace(max_position_embeddings=32)

        def get_output_embeddings(self):
            return self.lm_head

        def get_input_embeddings(self):
            return self.embed

    fake = types.ModuleType("transformers")
    fake.AutoModelForCausalLM = types.SimpleNamespace(from_pretrained=lambda *a, **k: (Model(), {"missing_keys": []}))
    fake.utils = types.SimpleNamespace(logging=types.SimpleNamespace(set_verbosity_error=lambda: None,
                                                                     disable_progress_bar=lambda: None))
    monkeypatch.setitem(sys.modules, "transformers", fake)
    with pytest.raises(SpamLangError, match=r"output embedding \(lm_head.weight\) holds non-finite values"):
        checkpoint.load_model(_checkpoint(tmp_path), torch.device("cpu"), torch.float32)


# -- score --by -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("by,fragment", [(",", "names no field"), (" , ,", "names no field"),
                                         ("nope", "unknown field 'nope'"), ("task,,bogus", "'bogus'")])
def test_score_by_is_checked(run_cli, tmp_path, by, fragment):
    from tests.test_leaderboard import make_record, write_all
    folder = write_all(tmp_path / "runs", [make_record(seed=s) for s in range(2)])
    assert_user_error(run_cli("score", folder, "--by", by), "--by", fragment)
    assert run_cli("score", folder, "--by", "task,vocab_size").code == 0

