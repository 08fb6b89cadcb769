"""The harness's evaluation metrics: per-seed streams, standard errors, same-sample baselines, tie-aware accuracy,
logit scale, update cosine, spectrum share, optimizers and budgets in examples per symbol."""
from __future__ import annotations

import copy
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from spamlang.config import RunConfig, budget_steps
from spamlang.diagnostics import spectrum_share
from spamlang.errors import ConfigError
from spamlang.record import FROM_LAST_EVALUATION
from spamlang.rng import Rng
from spamlang.task import make_task
from spamlang.training.evaluator import Evaluator, mean_and_se, tie_aware_hits
from spamlang.training.loop import train
from spamlang.training.probes import GradientProbe, copied_update, next_update
from spamlang.training.trainer import Trainer
from tests.conftest import assert_user_error

TINY = dict(d_model=16, layers=1, batch_size=16, seq_len=8, eval_sequences=32, diag_tokens=64, device="cpu")


@dataclasses.dataclass
class Parts:
    """A run's trainer with its evaluator and gradient probe, as the training loop builds them."""

    trainer: Trainer
    evaluator: Evaluator
    probe: GradientProbe

    def diagnostics(self, step: int) -> dict:
        return self.probe.diagnostics(self.evaluator.eval_batches["val"], step)


def parts(config: RunConfig) -> Parts:
    t = Trainer(config)
    return Parts(t, Evaluator(t), GradientProbe(t))


def trainer(**settings) -> Parts:
    return parts(RunConfig(**{"task": "spam", "vocab_size": 64, **TINY, **settings}))


# -- evaluation streams and standard errors ---------------------------------------------------------------------------
def test_each_seed_has_its_own_eval_streams():
    a, b, again = trainer(seed=0), trainer(seed=1), trainer(seed=0)
    for name in ("val", "test"):
        assert not torch.equal(a.evaluator.eval_batches[name], b.evaluator.eval_batches[name])
        assert torch.equal(a.evaluator.eval_batches[name], again.evaluator.eval_batches[name])
    assert not torch.equal(a.evaluator.eval_batches["val"], a.evaluator.eval_batches["test"])
    assert not torch.equal(a.evaluator.eval_batches["test"],
                           trainer(seed=0, eval_seed=1).evaluator.eval_batches["test"])
    expected = make_task("spam").sample(32, 8, 64, Rng(1, 0, "test"))
    assert torch.equal(b.evaluator.eval_batches["test"], expected)


def test_default_eval_size_resolves_the_tolerance_on_the_noisiest_task():
    """spam-noisy at V = 4096: the Bayes predictor's own test loss has a standard error well below 0.05 nats."""
    t = parts(RunConfig(task="spam-noisy", vocab_size=4096, d_model=16, layers=1, device="cpu"))
    bayes = t.evaluator.baselines["bayes"]  # (N, P)
    assert bayes.shape == (RunConfig(task="spam", vocab_size=2).eval_sequences, 15)
    per_sequence = bayes.mean(dim=1).numpy()
    se = per_sequence.std(ddof=1) / math.sqrt(len(per_sequence))
    assert se < 0.02
    assert mean_and_se(bayes) == pytest.approx((per_sequence.mean(), se))


def test_baselines_are_scored_on_the_very_test_positions():
    rec = train(RunConfig(task="spam-noisy", vocab_size=32, **{**TINY, "eval_sequences": 200}, steps=30,
                          eval_every=30))
    last = rec.history[-1]
    tokens = make_task("spam-noisy").sample(200, 8, 32, Rng(0, 0, "test"))
    bayes = -make_task("spam-noisy").log_prob(tokens, 32)[:, 1:].numpy()  # (N, 7)
    assert last.test_bayes_loss == pytest.approx(bayes.mean(), abs=1e-12)
    assert last.test_bayes_loss != pytest.approx(rec.bayes_loss, abs=1e-3)  # a sample, not the population
    assert last.test_uniform_loss == pytest.approx(math.log(32))
    for key in ("test_loss_se", "val_loss_se", "test_bayes_gap_se", "test_unigram_gap_se"):
        assert 0 < getattr(last, key) < 0.2
    assert ({k: getattr(rec.final, k) for k in FROM_LAST_EVALUATION}
            == {k: getattr(last, k) for k in FROM_LAST_EVALUATION})


def test_gap_standard_errors_are_paired_over_sequences():
    t = trainer(task="spam-noisy", eval_sequences=100)
    test = t.evaluator.evaluate("test")
    model = test["losses"].numpy()  # (N, P)
    out = t.evaluator.baseline_metrics(test["losses"])

    def se(x):
        per_sequence = x.mean(axis=1)
        return per_sequence.std(ddof=1) / math.sqrt(len(per_sequence))

    bayes, unigram = t.evaluator.baselines["bayes"].numpy(), t.evaluator.baselines["unigram"].numpy()
    assert test["loss"] == pytest.approx(model.mean()) and test["loss_se"] == pytest.approx(se(model))
    assert out["test_bayes_gap_se"] == pytest.approx(se(model - bayes))
    assert out["test_unigram_gap_se"] == pytest.approx(se(model - unigram))
    assert out["test_bayes_gap_se"] != pytest.approx(math.hypot(se(model), se(bayes)), rel=0.01)  # paired


def test_unigram_baseline_uses_token_frequencies():
    """spam-zipf: the unigram predictor beats uniform and lands near the Zipf cross-entropy; on spam it is uniform."""
    zipf = trainer(task="spam-zipf", eval_sequences=400)
    probs = torch.arange(1, 65, dtype=torch.float64).pow(-1.0)
    entropy = float(-(probs / probs.sum() * (probs / probs.sum()).log()).sum())
    point = zipf.evaluator.baseline_metrics(torch.zeros_like(zipf.evaluator.baselines["unigram"]))
    assert point["test_unigram_loss"] == pytest.approx(entropy, abs=0.15) and entropy < math.log(64) - 0.5
    spam = trainer(eval_sequences=400)
    assert (spam.evaluator.baseline_metrics(torch.zeros_like(spam.evaluator.baselines["unigram"]))["test_unigram_loss"]
            == pytest.approx(math.log(64), abs=0.01))


def test_tasks_without_log_prob_have_no_bayes_loss_on_the_test_stream(monkeypatch):
    t = trainer()
    monkeypatch.setattr(type(t.trainer.task), "log_prob",
                        lambda self, tokens, v: (_ for _ in ()).throw(NotImplementedError))
    t = trainer()
    out = t.evaluator.baseline_metrics(t.evaluator.evaluate("test")["losses"])
    assert out["test_bayes_loss"] is None and out["test_bayes_gap_se"] is None and out["test_unigram_loss"] > 0


# -- tie-aware accuracy and logit scale -------------------------------------------------------------------------------
def test_tie_aware_hits():
    lp = torch.tensor([[0.0, 0.0, 0.0], [1.0, 3.0, 2.0], [3.0, 3.0, 1.0], [1.0, 2.0, float("nan")]])
    y = torch.tensor([0, 1, 0, 1])
    assert tie_aware_hits(lp, y).tolist() == [False, True, False, False]


def test_tie_aware_hits_in_place_agree_with_a_top_two_sort():
    g = torch.Generator().manual_seed(0)
    lp = torch.randint(0, 4, (500, 6), generator=g).float()  # many ties
    y = torch.randint(0, 6, (500,), generator=g)
    top = lp.topk(2, dim=1)
    expected = (top.indices[:, 0] == y) & (top.values[:, 0] > top.values[:, 1])
    assert torch.equal(tie_aware_hits(lp, y), expected) and 0 < expected.sum() < 500
    assert torch.equal(tie_aware_hits(lp.clone(), y, inplace=True), expected)


def test_a_constant_predictor_scores_zero_accuracy_and_no_logit_scale():
    t = trainer()
    with torch.no_grad():
        t.trainer.model.head.weight.zero_()  # every logit equal: the argmax is a tie everywhere
    val = t.evaluator.evaluate("val")
    assert val["accuracy"] == 0.0 and val["loss"] == pytest.approx(math.log(64), abs=1e-6)
    assert val["accuracy_seen"] is None and val["accuracy_unseen"] == 0.0
    assert t.diagnostics(0)["logit_scale"] == 0.0


def test_logit_scale_is_the_median_half_range_and_scales_with_the_head():
    t = trainer()
    h, _ = t.probe.diagnostic_states(t.evaluator.eval_batches["val"])
    z = (h.double() @ t.trainer.model.head.weight.detach().double().T).numpy()  # (M, V) logits
    expected = np.median((z.max(axis=1) - z.min(axis=1)) / 2)
    assert t.diagnostics(0)["logit_scale"] == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        t.trainer.model.head.weight.mul_(3)
    assert t.diagnostics(0)["logit_scale"] == pytest.approx(3 * expected, rel=1e-5)


# -- update cosine ----------------------------------------------------------------------------------------------------
def _first_order_cosine(t: Trainer, step_of) -> float:
    """cos(ΔZ, −G) from an independent float64 computation: explicit logits h Wᵀ, the step Δθ = step_of(∇θ L) from
    plain autograd, and ΔZ by a central finite difference."""
    model = copy.deepcopy(t.trainer.model).double()
    tokens = t.evaluator.eval_batches["val"][:t.probe.diag_rows]
    n = t.trainer.config.diag_tokens

    def logits(m):
        h = m.hidden(tokens[:, :-1])[:, t.trainer.mask].reshape(-1, m.head.d_model)[:n]
        return h @ m.head.weight.T

    y = tokens[:, 1:][:, t.trainer.mask].reshape(-1)[:n]
    z = logits(model)
    loss = F.cross_entropy(z, y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    g = (F.softmax(z.detach(), dim=1) - F.one_hot(y, 64).double()) / n
    steps = [step_of(gr) for gr in grads]
    eps = 1e-5

    def shifted(sign):
        m = copy.deepcopy(model)
        with torch.no_grad():
            for p, s in zip(m.parameters(), steps):
                p.add_(sign * eps * s)
            return logits(m)

    dz = (shifted(1) - shifted(-1)) / (2 * eps)
    return float(-(dz * g).sum() / (dz.norm() * g.norm()))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_update_cosine_matches_an_independent_first_order_computation(optimizer):
    settings = dict(optimizer=optimizer, momentum=0.0 if optimizer == "sgd" else 0.9, lr=0.1, warmup=0,
                    schedule="constant", grad_clip=0.0)
    t = trainer(**settings)
    measured = t.diagnostics(0)["update_cosine"]
    if optimizer == "sgd":  # Δθ = −lr ∇L
        expected = _first_order_cosine(t, lambda g: -0.1 * g)
    else:  # AdamW's first step: m̂ = g, v̂ = g², Δθ = −lr g / (|g| + eps)
        expected = _first_order_cosine(t, lambda g: -0.1 * g / (g.abs() + 1e-8))
    assert measured == pytest.approx(expected, abs=2e-4)
    assert 0 < measured < 1


def test_update_cosine_never_touches_training():
    """Training with the measurement and without it gives bit-identical trajectories and weights (AdamW state with a
    tied head, SGD momentum)."""
    for settings in (dict(head="tied"), dict(optimizer="sgd", head="lowrank", head_rank=2), dict(head="sampled")):
        config = RunConfig(task="cycle", vocab_size=32, **TINY, steps=12, eval_every=4, **settings)
        trainer_with, with_measure = parts(config), []
        for step in range(12):
            assert trainer_with.diagnostics(step)["update_cosine"] is not None
            with_measure.append(trainer_with.trainer.train_step(step).item())
        trainer_without = Trainer(config)
        without = [trainer_without.train_step(s).item() for s in range(12)]
        assert with_measure == without
        for (name, a), b in zip(trainer_with.trainer.model.state_dict().items(),
                                trainer_without.model.state_dict().values()):
            assert torch.equal(a, b), name
        for a, b in zip(trainer_with.trainer.optimizer.state.values(), trainer_without.optimizer.state.values()):
            assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("settings", [dict(), dict(task="cycle", head="tied", weight_decay=0.1),
                                      dict(optimizer="sgd", head="lowrank", head_rank=2, weight_decay=0.01),
                                      dict(optimizer="sgd", momentum=0.0, grad_clip=0.0, head="mos"),
                                      dict(task="shift", head="sampled", backbone="gru", grad_clip=0.05)])
def test_the_computed_next_step_is_the_step_of_a_copy(settings):
    """Δθ computed from the gradients and the optimizer's state (next_update) against one step of a copied model and
    optimizer (the former implementation, copied_update), before any step and after some; and the cosines."""
    t = trainer(**{"task": "spam", "vocab_size": 32, "steps": 12, **settings})
    tokens = t.evaluator.eval_batches["val"][:t.probe.diag_rows]
    for step in (0, 4, 9):
        computed, copied = next_update(t.trainer, tokens, 0.01), copied_update(t.trainer, tokens, 0.01)
        assert computed.keys() == copied.keys()
        params = dict(t.trainer.model.named_parameters())
        for name, d in copied.items():
            expected = torch.zeros_like(d) if computed[name] is None else computed[name]
            ulp = 2.4e-7 * params[name].detach().abs().max().item()  # the copy's Δθ is rounded to float32 θ + Δθ
            assert torch.allclose(expected, d, rtol=1e-4, atol=ulp), (settings, step, name)
        for s in range(step, step + 5):
            t.trainer.train_step(s)


def test_update_cosine_is_the_copied_steps(monkeypatch):
    t = trainer(task="cycle", vocab_size=32, steps=12)
    for s in range(6):
        t.trainer.train_step(s)
    tokens = t.evaluator.eval_batches["val"][:t.probe.diag_rows]
    g, _ = t.probe.logit_gradient(tokens)
    computed = t.probe.update_cosine(tokens, g, 6)
    monkeypatch.setattr("spamlang.training.probes.next_update", lambda *args: None)  # falls back to the copy
    assert computed == pytest.approx(t.probe.update_cosine(tokens, g, 6), abs=1e-6)


def test_update_cosine_is_recorded_for_every_builtin_head():
    for head, rank in (("linear", None), ("lowrank", 2), ("gradproj", 2), ("tied", None), ("mos", None)):
        rec = train(RunConfig(task="shift", vocab_size=32, **TINY, steps=4, eval_every=2, head=head, head_rank=rank))
        for point in rec.history:
            assert -1 <= point.update_cosine <= 1 and point.update_cosine != 0, head
            assert 0 < point.grad_top_share <= 1 + 1e-12 and point.logit_scale > 0


def test_grad_top_share_is_the_spectrum_share_of_the_diagnostic_gradient():
    t = trainer(head="lowrank", head_rank=1)
    g, _ = t.probe.logit_gradient(t.evaluator.eval_batches["val"])
    s2 = np.linalg.svd(g.numpy(), compute_uv=False) ** 2
    assert t.diagnostics(0)["grad_top_share"] == pytest.approx(s2[:2].sum() / s2.sum(), rel=1e-9)
    assert spectrum_share(g.T, 2) == pytest.approx(s2[:2].sum() / s2.sum(), rel=1e-9)  # either side's Gram


# -- optimizers -------------------------------------------------------------------------------------------------------
def test_optimizer_choice():
    assert isinstance(trainer().trainer.optimizer, torch.optim.AdamW)
    sgd = trainer(optimizer="sgd", momentum=0.5).trainer.optimizer
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["momentum"] == 0.5
    assert RunConfig(task="spam", vocab_size=8).run_id != RunConfig(task="spam", vocab_size=8, optimizer="sgd").run_id


@pytest.mark.parametrize("settings,fragment", [
    ({"optimizer": "adam"}, "'optimizer'='adam' is not one of adamw, sgd"),
    ({"optimizer": "sgd", "momentum": 1.0}, "momentum"),
    ({"momentum": 0.5}, "momentum applies to optimizer 'sgd' only"),
    ({"examples_per_symbol": 0}, "examples_per_symbol"),
    ({"examples_per_symbol": float("inf")}, "examples_per_symbol"),
])
def test_bad_optimizer_and_budget_settings(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RunConfig(task="spam", vocab_size=8, **settings)


# -- budgets in examples per symbol -----------------------------------------------------------------------------------
def test_symbols_per_sequence_of_the_builtin_tasks():
    expected = {"spam": 1, "spam-noisy": 1, "spam-zipf": 1, "cycle": 3, "bag": 8, "permutation": 15, "shift": 15}
    assert {name: make_task(name).symbols_per_sequence(16) for name in expected} == expected


def test_examples_per_symbol_sets_the_steps():
    assert budget_steps(150, 128, 64, 1) == 300
    assert budget_steps(0.1, 10, 1, 1) == 1 and budget_steps(10, 1000, 64, 15) == 11  # 10.42 -> 11
    with pytest.raises(ConfigError, match=r"give steps or examples_per_symbol, not both \(steps=7"):
        RunConfig(task="spam", vocab_size=128, batch_size=64, examples_per_symbol=150, steps=7).resolve()
    config = RunConfig(task="spam", vocab_size=128, batch_size=64, examples_per_symbol=150).resolve()
    assert config.steps == 300 and config.examples_per_symbol == 150
    assert config.resolve() == config and dataclasses.replace(config, batch_size=32).steps == 600
    assert RunConfig(task="cycle", vocab_size=128, batch_size=64, examples_per_symbol=150).resolve().steps == 100


def test_records_report_steps_tokens_and_examples_per_symbol():
    rec = train(RunConfig(task="cycle", vocab_size=64, **TINY, examples_per_symbol=3, eval_every=2))
    assert rec.config.steps == 4  # ceil(3 · 64 / (16 · 3))
    final = rec.final
    assert (final.steps, final.tokens, final.examples_per_symbol) == (4, 4 * 16 * 8, 3.0)
    assert [p.examples_per_symbol for p in rec.history] == [0.0, 1.5, 3.0]


def test_train_cli_budget_and_optimizer(run_cli, tmp_path):
    base = ["train", "--task", "spam", "--vocab-size", 32, "--d-model", 16, "--layers", 1, "--eval-sequences", 16,
            "--device", "cpu", "--out", tmp_path]
    assert_user_error(run_cli(*base, "--steps", 5, "--examples-per-symbol", 2),
                      "give steps or examples_per_symbol, not both (steps=5, examples_per_symbol=2.0)")
    assert_user_error(run_cli(*base, "--optimizer", "adam"), "adam")
    assert_user_error(run_cli(*base, "--momentum", 0.5), "momentum applies to optimizer 'sgd' only")
    r = run_cli(*base, "--examples-per-symbol", 4, "--optimizer", "sgd", "--momentum", 0.8, "--json")
    assert r.code == 0, r.err
    import json
    rec = json.loads(r.out)
    assert rec["config"]["steps"] == 2 and rec["config"]["optimizer"] == "sgd" and rec["final"]["steps"] == 2
