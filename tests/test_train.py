"""The training harness: learning, the rank-2 contrast, determinism, divergence, records and the train CLI."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from spamlang import record
from spamlang.config import ResolvedConfig, RunConfig
from spamlang.record.learned import LEARNED_MARGIN
from spamlang.training.loop import train
from tests.conftest import assert_user_error


@pytest.fixture(scope="module")
def spam256():
    return train(RunConfig(task="spam", vocab_size=256, d_model=32, steps=300, lr=0.01, seed=0, device="cpu"))


def test_spam_small_vocab_is_learned(spam256):
    """Learned means the test loss stays within the margin of the Bayes loss (0 here) from steps_to_learn on."""
    assert spam256.status == "ok"
    assert spam256.final.accuracy >= 0.99
    learned_at = spam256.final.steps_to_learn
    assert learned_at is not None and learned_at < 300
    assert all((p.test_loss <= LEARNED_MARGIN) == (p.step >= learned_at) for p in spam256.history)
    assert spam256.final.coverage == 1.0


def test_record_is_complete_and_survives_json(spam256):
    rec = record.RunRecord.from_json(spam256.to_json(), "test")
    assert rec.to_json() == spam256.to_json()
    assert rec.run_id == RunConfig(task="spam", vocab_size=256, d_model=32, steps=300, lr=0.01).run_id
    first, last = rec.history[0], rec.history[-1]
    assert first.step == 0 and last.step == 300
    for value in (last.val_loss, last.test_loss, last.test_accuracy, last.coverage, last.grad_destroyed,
                  last.grad_kept_cos):
        assert value is not None
    assert last.grad_baseline == pytest.approx((1 - 32 / 256) ** 0.5)
    assert 0 < rec.final.tokens_per_second
    assert rec.env.torch and rec.env.device == "cpu" and rec.config.seed == 0


def test_rank2_contrast_at_large_vocab():
    """V = 8192, D = 32: a rank-2 factorised head does not learn in 300 steps; the full head's curve is ahead."""
    common = dict(task="spam", vocab_size=8192, d_model=32, steps=300, seed=0, device="cpu", eval_sequences=128)
    full = train(RunConfig(**common))
    low = train(RunConfig(**common, head="lowrank", head_rank=2))
    assert low.final.accuracy < 0.99 and low.final.steps_to_learn is None
    full_curve = [p.test_loss for p in full.history[1:]]
    low_curve = [p.test_loss for p in low.history[1:]]
    assert all(full_loss < low_loss for full_loss, low_loss in zip(full_curve, low_curve))
    assert full.final.accuracy > low.final.accuracy


def test_same_seed_same_record_on_cpu():
    config = RunConfig(task="cycle", vocab_size=64, d_model=16, steps=20, eval_every=10, device="cpu")
    a, b = train(config), train(config)
    assert a.history == b.history
    c = train(RunConfig(**{**config.to_dict(), "seed": 1}))
    assert c.history[-1].test_loss != a.history[-1].test_loss


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train(RunConfig(task="cycle", vocab_size=16, d_model=8, steps=2, eval_every=2, device="cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_huge_learning_rate_diverges(tmp_path):
    rec = train(RunConfig(task="spam", vocab_size=64, d_model=16, steps=50, lr=1e9, grad_clip=0, warmup=0,
                          device="cpu"))
    assert rec.status == "diverged" and rec.final.steps_to_learn is None
    text = (record.write(rec, tmp_path)).read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: non-finite numbers become null
    assert record.read(tmp_path / f"{rec.run_id}.json").status == "diverged"


def test_gru_backbone_and_other_heads_train():
    for head, rank in (("tied", None), ("gradproj", 4), ("mos", None)):
        rec = train(RunConfig(task="shift", vocab_size=64, d_model=16, steps=10, eval_every=5, backbone="gru",
                              head=head, head_rank=rank, device="cpu"))
        assert rec.status == "ok" and rec.rank == (4 if head == "gradproj" else 16)


def test_resolve_fills_defaults_so_ids_agree():
    a = RunConfig(task="bag", vocab_size=64).resolve()
    b = RunConfig(task="bag", vocab_size=64, task_params={"k": "8"}).resolve()
    assert isinstance(a, ResolvedConfig) and a.resolve() is a
    assert a.task_params == {"k": 8} and a.run_id == b.run_id
    assert dataclasses.replace(a, task_params={"k": "4"}).task_params == {"k": 4}  # still resolved
    assert RunConfig(task="bag", vocab_size=64, device="cpu").run_id == RunConfig(task="bag", vocab_size=64).run_id


def test_train_cli_json_prints_only_the_record(run_cli, tmp_path):
    r = run_cli("train", "--task", "spam", "--vocab-size", 32, "--d-model", 16, "--steps", 5, "--eval-every", 5,
                "--device", "cpu", "--out", tmp_path, "--json")
    assert r.code == 0, r.err
    rec = json.loads(r.out)
    assert rec["config"]["steps"] == 5
    assert (tmp_path / f"{rec['run_id']}.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [f"{rec['run_id']}.json"]


def test_train_cli_says_whether_the_run_learned(run_cli, tmp_path):
    r = run_cli("train", "--task", "spam", "--vocab-size", 32, "--d-model", 16, "--steps", 5, "--eval-every", 5,
                "--device", "cpu", "--out", tmp_path, "--quiet")
    assert r.code == 0, r.err
    assert r.out.startswith("ok: test loss ") and ", not learned, " in r.out and "None" not in r.out


def test_probe_round_trip(run_cli, tmp_path):
    r = run_cli("train", "--task", "spam", "--vocab-size", 64, "--d-model", 16, "--head", "lowrank", "--head-rank",
                2, "--steps", 5, "--device", "cpu", "--out", tmp_path, "--save-checkpoint", "--json")
    run_id = json.loads(r.out)["run_id"]
    p = run_cli("probe", tmp_path / f"{run_id}.pt", "--json", "--batches", 2)
    assert p.code == 0, p.err
    out = json.loads(p.out)
    assert out["rank"] == 2 and 0 < out["grad_kept_cos"] < 1 and 0 < out["spectrum_top_2r"] <= 1
    assert_user_error(run_cli("probe", tmp_path / "nope.pt"), "not found")


@pytest.mark.parametrize("args,fragment", [
    (["--head", "linear", "--head-rank", 4], "takes no rank"),
    (["--head", "lowrank", "--head-rank", 0], "head_rank"),
    (["--head", "lowrank", "--head-rank", 64], "head_rank"),
    (["--head", "lowrank"], "needs a rank"),
    (["--head", "tied", "--embed-dim", 8], "embed"),
    (["--head", "nope"], "unknown head 'nope'"),
    (["--task", "nope"], "unknown task 'nope'"),
    (["--vocab-size", 1], "vocab_size"),
    (["--lr", -1], "lr"),
    (["--device", "tpu"], "device"),
    (["--backbone", "lstm"], "unknown backbone"),
    (["--device", "cuda:99"], "not available"),
])
def test_train_bad_input(run_cli, tmp_path, args, fragment):
    base = {"--task": "spam", "--vocab-size": 64, "--d-model": 16, "--steps": 2}
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1] if i + 1 < len(args) else None
    flat = [x for k, v in base.items() for x in ((k, v) if v is not None else (k,))]
    assert_user_error(run_cli("train", *flat, "--out", tmp_path / "o"), fragment)
    assert not (tmp_path / "o").exists()


# -- time to learn: schedules that do not depend on the cap, early stopping -------------------------------------------
TIME = dict(task="spam", vocab_size=64, d_model=16, layers=1, seq_len=2, batch_size=16, lr=0.03, warmup=5,
            eval_every=16, eval_sequences=256, diag_tokens=32, device="cpu")


def test_a_constant_schedule_learns_at_the_same_step_whatever_the_cap():
    """Under ``constant`` the lr at a step does not depend on the cap, so the run with cap 256 is a prefix of the
    one with cap 1,024 (stopped once learned at 4 evaluations in a row), and both learn at the same step."""
    short = train(RunConfig(**TIME, schedule="constant", steps=256))
    long = train(RunConfig(**TIME, schedule="constant", steps=1024, stop_after=4))
    assert short.final.steps_to_learn is not None and short.final.stopped == "cap"
    assert long.final.steps_to_learn == short.final.steps_to_learn
    shared = min(len(long.history), len(short.history))  # the same steps, bit for bit, up to the long one's stop
    assert [p.test_loss for p in long.history[:shared]] == [p.test_loss for p in short.history[:shared]]
    assert long.final.stopped == "learned" and long.final.steps < 1024
    assert long.final.steps == long.final.steps_to_learn + 3 * TIME["eval_every"]  # the 4th learned evaluation


def test_the_cosine_schedule_moves_with_the_cap_and_wsd_only_in_its_decay():
    from spamlang.training.trainer import learning_rate
    cosine = [learning_rate(RunConfig(**TIME, steps=cap), 100) for cap in (256, 1024)]
    assert cosine[0] < cosine[1]  # the same step, a lower lr under the shorter cap
    wsd = [RunConfig(**TIME, schedule="wsd", steps=cap, decay=0.2) for cap in (256, 1024)]
    assert [learning_rate(c, 200) for c in wsd] == [TIME["lr"]] * 2  # before 256's decay starts at 204.8
    assert learning_rate(wsd[0], 255) == pytest.approx(0.1 * TIME["lr"]) and learning_rate(wsd[1], 255) == TIME["lr"]


def test_settings_added_later_leave_earlier_run_ids_alone():
    base = RunConfig(task="spam", vocab_size=64)
    assert base.run_id == "65a64c857b1329d1"  # as records written before decay and stop_after existed have it
    assert RunConfig(task="spam", vocab_size=64, stop_after=2).run_id != base.run_id
    with pytest.raises(Exception, match="decay applies to schedule 'wsd' only"):
        RunConfig(task="spam", vocab_size=64, decay=0.5)
