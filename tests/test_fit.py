"""Scaling fits: the censored power law and its bootstrap, observations from records, the gradproj control, the
``spamlang fit`` verb and its figures."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pandas as pd
import pytest

from spamlang import record
from spamlang.publishing import fitreport, plots
from spamlang.publishing.load import load_folders
from spamlang.scoring import fit
from spamlang.scoring.frames import load_runs
from tests.conftest import assert_user_error
from tests.records import make_record

D = 8
BUDGET = 2000  # steps: evaluations every 100 steps, as make_record writes them
#: seeds learn at these multiples of 200·(V/D)/4 steps: a power law of exponent 1 in steps, the same spread at every V
SPREAD = (1.0, 1.5, 2.0)


def learning_at(step: int | None, budget: int = BUDGET, final: float = 0.01) -> tuple[float, ...]:
    """Test losses of a run evaluated every 100 steps up to ``budget`` that is learned from ``step`` on (None:
    never)."""
    learned = budget // 100 + 1 if step is None or step > budget else step // 100
    return tuple(4.0 if i < learned else final for i in range(budget // 100 + 1))


def spam_run(vocab_size: int, seed: int, step: int | None, *, head="linear", head_rank=None, lr=0.01,
             budget=BUDGET, final=0.01, examples_per_symbol=None):
    return make_record(task="spam", vocab_size=vocab_size, d_model=D, head=head, head_rank=head_rank, seed=seed,
                       lr=lr, losses=learning_at(step, budget, final), examples_per_symbol=examples_per_symbol,
                       suite={"name": "cliff-test", "sweep": ["lr"]})


def power_law_runs(head="linear", head_rank=None, ratios=(4, 8, 16, 32, 64)) -> list:
    """Seeds learning at 200·(V/D)/4 × SPREAD steps (censored above BUDGET), at the chosen lr 0.01, beside an lr of
    0.1 that stays at a loss of 5 (so never chosen)."""
    runs = []
    for ratio in ratios:
        for seed, factor in enumerate(SPREAD):
            step = int(200 * ratio / 4 * factor)
            runs.append(spam_run(ratio * D, seed, step, head=head, head_rank=head_rank))
            runs.append(spam_run(ratio * D, seed, 0, head=head, head_rank=head_rank, lr=0.1, final=5.0))
    return runs


def write(folder, records):
    for rec in records:
        record.write(rec, folder)
    return folder


# -- the censored power law -------------------------------------------------------------------------------------------
def test_log_ndtr_matches_erfc_and_does_not_underflow():
    u = np.array([-30.0, -8.0, -2.5, -0.3, 0.0, 0.7, 3.0, 9.0])
    exact = [math.log(0.5 * math.erfc(-x / math.sqrt(2))) for x in u]
    assert np.allclose(fit.log_ndtr(u), exact, rtol=2e-7, atol=1e-15)
    far = fit.log_ndtr(np.array([-200.0]))[0]  # erfc underflows here; log Φ ≈ -u²/2 - log(-u √(2π))
    assert far == pytest.approx(-200.0 ** 2 / 2 - math.log(200 * math.sqrt(2 * math.pi)), rel=1e-6)


def test_tobit_without_censoring_is_least_squares():
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 4, 12)
    y = 0.5 + 1.3 * x + 0.2 * rng.standard_normal(12)
    a, b, sigma = fit.tobit(x, y, np.zeros(12, bool))[0]
    slope, intercept = np.polyfit(x, y, 1)
    assert (a, b) == (pytest.approx(intercept, abs=1e-8), pytest.approx(slope, abs=1e-8))
    assert sigma == pytest.approx(math.sqrt(np.mean((y - intercept - slope * x) ** 2)), rel=1e-6)


def synthetic(seed: int, b_true=1.5, sigma=0.6, seeds=8):
    """log steps = 2 + b·log(ratio) + noise, censored at a budget that cuts into the upper ratios."""
    rng = np.random.default_rng(seed)
    ratio = np.repeat([4.0, 8, 16, 32, 64, 128], seeds)
    log_steps = 2 + b_true * np.log(ratio) + sigma * rng.standard_normal(len(ratio))
    budget = math.exp(2 + b_true * math.log(48))
    censored = log_steps > math.log(budget)
    return ratio, np.exp(np.where(censored, math.log(budget), log_steps)), censored


def test_power_law_recovers_a_known_exponent_within_its_interval():
    ratio, steps, censored = synthetic(0)
    assert 0 < censored.sum() < len(censored)
    result = fit.power_law(ratio, steps, censored, resamples=400, seed=0)
    assert result["b_low"] < 1.5 < result["b_high"]
    assert result["b_high"] - result["b_low"] < 0.6 and result["boot_valid"] > 350
    again = fit.power_law(ratio, steps, censored, resamples=400, seed=0)  # the recorded seed fixes the interval
    assert (again["b_low"], again["b_high"]) == (result["b_low"], result["b_high"])


def test_censored_points_correct_the_bias_of_dropping_them():
    """Dropping the slow seeds that hit the budget keeps only the fast ones at large V/D: the slope comes out too
    low. The censored fit recovers the true one (over 20 data sets: on average, and within its interval mostly)."""
    censored_b, dropped_b, covered = [], [], 0
    for seed in range(20):
        ratio, steps, censored = synthetic(seed)
        result = fit.power_law(ratio, steps, censored, resamples=200, seed=seed)
        censored_b.append(result["b"])
        covered += result["b_low"] < 1.5 < result["b_high"]
        dropped_b.append(np.polyfit(np.log(ratio[~censored]), np.log(steps[~censored]), 1)[0])
    assert np.mean(dropped_b) < 1.5 - 0.12
    assert abs(np.mean(censored_b) - 1.5) < 0.05
    assert covered >= 16


def test_power_law_needs_learned_points_at_two_ratios():
    ratio = np.array([4.0, 4, 8, 8])
    result = fit.power_law(ratio, np.array([100.0, 120, 500, 500]), np.array([False, False, True, True]))
    assert math.isnan(result["b"]) and result["boot_valid"] == 0


def lr_grid(fast: list[float], slow: list[float]):
    """Observations at two ratios x two lrs x the seeds (steps per seed; inf: censored at 1,000), lr 0.01 chosen."""
    rows = [(r, lr, seed, t) for r in (4.0, 16.0) for lr, times in ((0.01, fast), (0.03, slow))
            for seed, t in enumerate(times)]
    ratio, lr, seed, t = map(np.array, zip(*rows))
    return ratio, lr, seed, np.where(np.isinf(t), 1000.0, t), np.isinf(t), lr == 0.01


def test_the_lr_choice_is_redone_in_each_resample():
    rng = lambda: np.random.default_rng(0)  # noqa: E731
    ratio, lr, seed, steps, censored, chosen = lr_grid([100, 110, 120, 130, 140], [300, 310, 320, 330, 340])
    index = fit.lr_choice_indices(ratio, lr, seed, steps, censored, chosen, 200, rng())
    assert index.shape == (200, 10) and chosen[index].all()  # the other lr is slower on every seed: never taken
    # the other lr learns faster on 3 seeds of 5 and never on 2: a resample drawing mostly the first takes it
    ratio, lr, seed, steps, censored, chosen = lr_grid([100, 110, 120, 130, 140], [50, 60, 70, math.inf, math.inf])
    index = fit.lr_choice_indices(ratio, lr, seed, steps, censored, chosen, 400, rng())
    taken = (~chosen[index]).mean()
    assert 0.2 < taken < 0.8
    per_ratio = index.reshape(400, 2, 5)  # a resample takes one lr per ratio, for all its drawn seeds
    assert all(len(set(chosen[row].tolist())) == 1 for rows in per_ratio for row in rows)
    assert np.array_equal(seed[index], seed[fit.lr_choice_indices(ratio, lr, seed, steps, censored, chosen, 400,
                                                                    rng())])  # the seed fixes the draws
    # an lr missing a seed's run is never taken
    keep = ~((lr == 0.03) & (seed == 4))
    index = fit.lr_choice_indices(*(a[keep] for a in (ratio, lr, seed, steps, censored, chosen)), 100, rng())
    assert chosen[keep][index].all()


def test_the_lr_choice_enters_the_interval_and_not_the_estimate():
    """Two lrs that trade places by seed: the bootstrap that redoes the choice takes the other lr in some resamples,
    so its interval differs from the one that keeps the lr the full data chose; the point estimate does not."""
    rng = np.random.default_rng(1)
    ratios = np.array([4.0, 8, 16, 32, 64])
    rows = []
    for lr in (0.01, 0.03):
        for r in ratios:
            for seed in range(5):
                rows.append((r, lr, seed, math.exp(2 + 0.5 * math.log(r) + 0.6 * rng.standard_normal())))
    ratio, lr, seed, steps = map(np.array, zip(*rows))
    censored = np.zeros(len(steps), bool)
    medians = {(r, v): np.median(steps[(ratio == r) & (lr == v)]) for r in ratios for v in (0.01, 0.03)}
    chosen = np.array([medians[(r, v)] <= medians[(r, 0.03 if v == 0.01 else 0.01)] for r, v in zip(ratio, lr)])
    kept = fit.power_law(ratio[chosen], steps[chosen], censored[chosen], resamples=400, seed=0)
    index = fit.lr_choice_indices(ratio, lr, seed, steps, censored, chosen, 400, np.random.default_rng(0))
    redone = fit.power_law(ratio[chosen], steps[chosen], censored[chosen], resamples=400, seed=0,
                           draws=(ratio, steps, censored, index))
    assert redone["b"] == kept["b"]  # the point estimate is the chosen lr's
    assert redone["b_high"] - redone["b_low"] != kept["b_high"] - kept["b_low"]
    assert (~chosen[index]).any()


# -- from records -----------------------------------------------------------------------------------------------------
def test_the_two_budget_protocols_are_fitted_apart_and_drawn_on_one_figure(tmp_path):
    per_symbol = [spam_run(ratio * D, seed, int(200 * ratio / 4 * f), examples_per_symbol=ratio * 10.0)
                  for ratio in (4, 8, 16, 32) for seed, f in enumerate(SPREAD)]
    found = fitreport.fits(load_runs(write(tmp_path, power_law_runs(ratios=(4, 8, 16, 32)) + per_symbol)),
                           resamples=50)
    assert list(found.table["protocol"]) == ["examples/symbol", "tokens"]
    assert found.table["lr_choice"].all() and set(found.obs["protocol"]) == {"examples/symbol", "tokens"}
    text = fitreport.fit_markdown(found.table)
    assert "| examples/symbol |" in text and "| tokens          |" in text and "redoes that choice" in text
    figure = plots.steps_vs_ratio(found.table, found.obs)
    labels = {t.get_text() for legend in figure.legends for t in legend.get_texts()}
    assert {"fixed examples/symbol", "fixed tokens", "fixed-token budget"} <= labels


def test_observations_use_the_chosen_lr_the_learned_step_and_the_budget(tmp_path):
    runs = load_runs(write(tmp_path, power_law_runs()))
    obs = fit.observations(runs)
    assert len(obs) == 15 and set(obs["lr"]) == {0.01}
    assert sorted(obs["ratio"].unique()) == [4, 8, 16, 32, 64]
    at_32 = obs[obs["ratio"] == 32].sort_values("seed")
    assert list(at_32["steps"]) == [1600, BUDGET, BUDGET] and list(at_32["censored"]) == [False, True, True]
    row = at_32.iloc[0]
    assert row["examples"] == pytest.approx(row["budget_examples"] * 1600 / BUDGET)
    assert row["tokens"] == 1600 * 64 * 16  # batch 64, 16 tokens a sequence
    assert fit.critical_ratio(obs) == (16, 32)


def test_fit_table_from_records(tmp_path):
    obs = fit.observations(load_runs(write(tmp_path, power_law_runs())))
    table = fit.fit_table(obs, resamples=300)
    (row,) = table.to_dict(orient="records")
    assert (row["head"], row["d_model"], row["ratios"], row["n"], row["n_censored"]) == ("linear", D, 5, 15, 5)
    assert row["b_examples_low"] < 0 < row["b_examples_high"]  # steps ∝ V/D at fixed batch: examples per symbol flat
    assert abs(row["b_examples"]) < 0.15
    # tokens ∝ examples·V, so at fixed D the tokens exponent is the examples one plus 1, resamples and all
    assert row["b_tokens"] == pytest.approx(row["b_examples"] + 1, abs=1e-6)
    assert row["b_tokens_low"] == pytest.approx(row["b_examples_low"] + 1, abs=1e-6)
    assert (row["critical"], row["not_learned"], row["resamples"], row["bootstrap_seed"]) == (16, 32, 300, 0)
    dropped = obs[~obs["censored"]]
    slope = np.polyfit(np.log(dropped["ratio"]), np.log(dropped["examples"]), 1)[0]
    assert slope < row["b_examples"] - 0.05  # dropping the censored seeds would bias the exponent down


def test_a_larger_budget_replaces_the_smaller_one_at_its_v(tmp_path):
    """Failures rerun on 4x the budget: the fit reads each V at its largest budget, where the seeds learned."""
    small = [spam_run(64 * D, s, None, examples_per_symbol=10.0) for s in range(3)]
    large = [spam_run(64 * D, s, 4000 + 400 * s, budget=8000, examples_per_symbol=40.0) for s in range(3)]
    base = [spam_run(r * D, s, 200 * r, examples_per_symbol=10.0) for r in (4, 8) for s in range(3)]
    obs = fit.observations(load_runs(write(tmp_path, small + large + base)))
    at_64 = obs[obs["ratio"] == 64].sort_values("seed")
    assert list(at_64["steps"]) == [4000, 4400, 4800] and not at_64["censored"].any()
    assert obs["group"].nunique() == 1


def test_a_batch_scaled_with_v_stays_one_group(tmp_path):
    """The cliff suite's design: batch V / 16 at a constant budget in examples per symbol."""
    runs = [make_record(task="spam", vocab_size=r * D, d_model=D, seed=s, batch_size=r * D // 16,
                        examples_per_symbol=16, losses=learning_at(200 * r), suite={"name": "c", "sweep": ["lr"]})
            for r in (4, 16, 64) for s in range(3)]
    obs = fit.check_grid(fit.observations(load_runs(write(tmp_path, runs))))
    assert obs["group"].nunique() == 1 and sorted(set(obs["ratio"])) == [4, 16, 64]


def test_groups_by_head_and_width_and_refuses_a_single_v(tmp_path):
    runs = power_law_runs() + power_law_runs("lowrank", 2)
    table = fit.fit_table(fit.observations(load_runs(write(tmp_path / "grid", runs))), resamples=50)
    assert list(table["head"]) == ["linear", "lowrank:2"]
    single = [spam_run(64, s, 400) for s in range(3)]
    with pytest.raises(fit.SpamLangError, match="no V grid"):
        fit.check_grid(fit.observations(load_runs(write(tmp_path / "one", single))))


def test_control_says_which_head_gradproj_behaves_like(tmp_path):
    runs = []
    for seed in range(4):
        for vocab in (64, 256):
            runs.append(spam_run(vocab, seed, 300, final=0.01 + 0.002 * seed))
            runs.append(spam_run(vocab, seed, 300, head="gradproj", head_rank=2, final=0.01 + 0.002 * seed))
            runs.append(spam_run(vocab, seed, None, head="lowrank", head_rank=2, final=3.0 + 0.05 * seed))
    control = fit.control_table(load_runs(write(tmp_path, runs)))
    assert list(control["vocab_size"]) == [64, 256] and set(control["like"]) == {"linear"}
    row = control.iloc[0]
    assert row["n"] == 4 and (row["learned_gradproj"], row["learned_lowrank"]) == (4, 0)
    assert row["p_loss_lowrank"] < 0.05 and math.isnan(row["p_loss_linear"])  # identical losses: untestable
    # times: gradproj learned before lowrank's cap in all 4 pairs (exact p = 2/2^4), tied with linear (untestable)
    assert row["p_steps_lowrank"] == pytest.approx(0.125) and math.isnan(row["p_steps_linear"])
    assert row["dsteps_lowrank"] == pytest.approx(math.log(300 / BUDGET))  # the budget, a lower bound
    assert "| linear" in fitreport.control_markdown(control)


def test_control_corrects_each_configuration_as_its_own_family(tmp_path):
    """A difference of about 3.5 nats with a seed spread of 0.5 (raw p = 0.007 over 3 seeds) counts at each of 8 V:
    the Holm family is the row's four tests, not the table's 32 (which would give p = 0.2 and 'no contrast')."""
    vocabs = (32, 64, 128, 256, 512, 1024, 2048, 4096)
    runs = [run for seed in range(3) for vocab in vocabs for run in (
        spam_run(vocab, seed, 300, final=0.01), spam_run(vocab, seed, 300, head="gradproj", head_rank=2, final=0.01),
        spam_run(vocab, seed, 300, head="lowrank", head_rank=2, final=3.0 + 0.5 * seed))]
    control = fit.control_table(load_runs(write(tmp_path, runs)))
    assert len(control) == len(vocabs) and set(control["like"]) == {"linear"}
    assert (control["p_loss_lowrank"] < 0.05).all() and (control["p_loss_lowrank"] > 0.01).all()


def test_control_without_contrast_and_without_gradproj(tmp_path):
    runs = [spam_run(64, s, 300, head=h, head_rank=r) for s in range(3)
            for h, r in (("linear", None), ("lowrank", 2), ("gradproj", 2))]
    runs = load_runs(write(tmp_path, runs))
    assert list(fit.control_table(runs)["like"]) == ["no contrast"]
    assert fit.control_table(runs[runs["head"] != "gradproj"]).empty


# -- figures ----------------------------------------------------------------------------------------------------------
def test_figures_write_png_and_svg(tmp_path):
    runs = load_runs(write(tmp_path / "runs", power_law_runs(ratios=(4, 16, 32))))
    result = fitreport.fits(runs, resamples=50)
    figures = fitreport.figures(result, runs)
    assert set(figures) == {"steps_to_learn.png", f"direction_D{D}.png"}
    for name, figure in figures.items():
        plots.save_both(figure, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert b"<svg" in (tmp_path / name).with_suffix(".svg").read_bytes()[:400]
    again = fitreport.figures(result, runs)
    for name, figure in again.items():  # the same figures drawn again give the same files
        _, vector = plots.save_both(figure, tmp_path / "again" / name)
        assert vector == (tmp_path / name).with_suffix(".svg").read_bytes()


def test_figures_rendered_on_forked_processes_are_the_same_bytes(tmp_path):
    runs = load_runs(write(tmp_path / "runs", power_law_runs(ratios=(4, 16, 32))))
    result = fitreport.fits(runs, resamples=20)
    fresh = lambda: list(fitreport.figures(result, runs).values())  # noqa: E731 (a render lays a figure out)
    alone = [plots.render_both(f) for f in fresh()]
    assert plots.render_many(fresh(), 1) == alone and plots.render_many(fresh(), 2) == alone


# -- the command line -------------------------------------------------------------------------------------------------
def test_fit_cli_writes_the_table_and_figures(run_cli, tmp_path):
    folder = write(tmp_path / "runs", power_law_runs(ratios=(4, 16, 32)) + power_law_runs("lowrank", 2, (4, 16)))
    result = run_cli("fit", folder, "--out", tmp_path / "board", "--resamples", 50)
    assert result.code == 0, result.err
    assert "## Scaling fits over V/D" in result.out and "| lowrank:2" in result.out and "50 resamples" in result.out
    names = {p.name for p in (tmp_path / "board").iterdir()}
    assert {"fit.md", "fit.csv", "control.csv", "steps_to_learn.png", "steps_to_learn.svg", f"direction_D{D}.png",
            f"direction_D{D}.svg"} <= names
    assert "](steps_to_learn.png)" in (tmp_path / "board" / "fit.md").read_text()
    assert "b_examples_low" in (tmp_path / "board" / "fit.csv").read_text()
    for name in ("fit.csv", "control.csv"):  # plain tables: pandas reads them as they are, provenance in the sidecar
        table = pd.read_csv(tmp_path / "board" / name)
        assert not (tmp_path / "board" / name).read_text().startswith("#") and len(table.columns) > 3
    sidecar = json.loads((tmp_path / "board" / "fit.provenance.json").read_text())
    assert set(sidecar["tables"]) >= {"fit.csv", "control.csv"} and sidecar["command"].startswith("spamlang fit")
    assert run_cli("fit", folder, "--out", tmp_path / "board", "--resamples", 50).code == 0  # its own files: replaced


def test_fit_cli_bad_input(run_cli, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("fit", tmp_path / "empty"), "no run records")
    one_v = write(tmp_path / "one", [spam_run(64, s, 400) for s in range(2)])
    assert_user_error(run_cli("fit", one_v), "no V grid")
    text = [dataclasses.replace(spam_run(v, 0, 400), bayes_loss=None) for v in (64, 128)]
    assert_user_error(run_cli("fit", write(tmp_path / "text", text)), "Bayes loss")
    assert_user_error(run_cli("fit", one_v, tmp_path / "text"), "--out is required")
    grid = write(tmp_path / "grid", power_law_runs())
    (tmp_path / "board").mkdir()
    (tmp_path / "board" / "fit.md").write_text("my notes\n")
    assert_user_error(run_cli("fit", grid, "--out", tmp_path / "board"), "fit.md")
    assert (tmp_path / "board" / "fit.md").read_text() == "my notes\n"
    assert not (tmp_path / "board" / "fit.csv").exists()  # nothing half-written


def test_leaderboard_includes_the_fits(tmp_path):
    from spamlang.publishing.board import write as write_board
    runs = load_folders([write(tmp_path / "runs", power_law_runs(ratios=(4, 16, 32)))])
    board = write_board(runs, tmp_path / "board", command="test")
    text, written = board.text, board.files
    assert "## Scaling fits over V/D" in text and "## Gradient-only control" in text and "| linear" in text
    names = {p.name for p in written}
    assert {"fit.csv", "steps_to_learn.png", "steps_to_learn.svg", "learnability.svg"} <= names
