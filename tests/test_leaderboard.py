"""The leaderboard: the paired test, ranking and ties, merging folders, version checks, provenance and the files."""
from __future__ import annotations

import base64
import dataclasses
import json
import math
import random
import re

import pandas as pd
import pytest

from spamlang import record
from spamlang.publishing import board, load, markdown, outputs, ranking
from spamlang.publishing.load import load_folders
from spamlang.publishing.outputs import provenance
from spamlang.publishing.ranking import chosen_runs, head_ranking
from spamlang.record import RunRecord
from spamlang.record.provenance import environment, git_commit
from spamlang.scoring import stats
from spamlang.scoring.floors import FloorCache
from spamlang.scoring.scorer import score
from spamlang.scoring.stats import wilcoxon_greater
from spamlang.task import make_task
from tests.conftest import assert_user_error
from tests.records import make_record as build_record

PNG = b"\x89PNG\r\n\x1a\n"


def make_record(vocab_size=16, head="linear", head_rank=None, seed=0, losses=(4.0, 1.0, 0.5), status="ok",
                task_version=None) -> RunRecord:
    """A SpamLang run record whose test loss follows ``losses`` (the floor is 0, so learnability is easy to check)."""
    return build_record(task="spam", vocab_size=vocab_size, head=head, head_rank=head_rank, d_model=8,
                               seed=seed, losses=losses, status=status, task_version=task_version, bayes_loss=0.0,
                               deterministic=True, rank=head_rank or 8, destroyed=(0.9, 0.9), kept_cos=0.3,
                               baseline=0.9, created=f"2026-01-0{seed + 1}T00:00:00+00:00",
                               suite={"name": "hand", "version": 3, "source": "test", "sweep": ["lr"]})


def grid(heads=(("linear", None), ("lowrank", 2)), seeds=3, vocab=(16, 32, 64)) -> list[dict]:
    """Linear learns fast, lowrank slowly, on every V and seed (losses vary a little by seed)."""
    return [make_record(v, head, rank, seed, (4.0, 1.0 if head == "linear" else 3.0, 0.5 + 0.01 * seed))
            for head, rank in heads for v in vocab for seed in range(seeds)]


def write_all(folder, records):
    for rec in records:
        record.write(rec, folder)
    return folder


# -- the paired test --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("differences,p", [
    ([1, 2, 3, 4, 5, 6], 1 / 64),           # all six positive: only the all-plus pattern reaches W+ = 21
    ([-1, 2, 3, 4, 5, 6], 2 / 64),          # W+ = 20: reached by all-plus and by flipping rank 1 only
    ([-1, -2, -3, -4, -5, -6], 1.0),        # the wrong direction: every pattern has W+ >= 0
    ([0.1, 0.1, -0.1], 0.5),                # one tie of three (average rank 2): W+ >= 4 in 4 of 8 patterns
    ([0.0, 0.0, 0.0], 1.0),                 # identical: no evidence at all
    ([], 1.0),
])
def test_wilcoxon_hand_checked(differences, p):
    assert wilcoxon_greater(differences) == pytest.approx(p)


def test_wilcoxon_significance_clear_winner_and_identical():
    assert wilcoxon_greater([0.3, 0.2, 0.25, 0.4, 0.1, 0.35, 0.3, 0.2]) < 0.01
    assert wilcoxon_greater([0.5 - 0.5] * 8) == 1.0


def test_wilcoxon_normal_approximation_close_to_exact(monkeypatch):
    rng = random.Random(0)
    differences = [rng.gauss(0.3, 1) for _ in range(30)]
    exact = wilcoxon_greater(differences)
    monkeypatch.setattr(stats, "EXACT_MAX", 0)  # the normal approximation from the first pair on
    assert 0.005 < exact < 0.5 and wilcoxon_greater(differences) == pytest.approx(exact, abs=0.01)


# -- ranking ----------------------------------------------------------------------------------------------------------
def scored_runs(folder, records):
    runs = load_folders([write_all(folder, records)])
    return score(runs, cache=FloorCache()), runs


def test_ranking_order_ties_and_diverged_runs(tmp_path):
    records = grid(heads=(("linear", None), ("lowrank", 2), ("lowrank", 4)))
    i = next(i for i, r in enumerate(records) if r.config.head_rank == 4 and r.config.vocab_size == 64)
    records[i] = dataclasses.replace(records[i], status="diverged")  # the same curve, but a diverged run counts 0
    scored, runs = scored_runs(tmp_path, records)
    runs_of = chosen_runs(scored, runs)
    assert len(runs_of) == 27
    for _, run in runs_of[runs_of["status"] == "ok"].iterrows():  # losses 4, a, 0.5 + seed / 100 over a floor of 0
        a = 1.0 if run["design"] == "linear" else 3.0
        assert run["learnability"] == pytest.approx(1 - (a / 4 + (0.5 + run["seed"] / 100) / 4) / 2)
    assert (runs_of.loc[runs_of["status"] == "diverged", "learnability"] == 0).all()
    table = head_ranking(scored, runs)
    assert list(table["head"]) == ["linear", "lowrank:2", "lowrank:4"]
    assert list(table["rank"]) == ["1", "2", "=2"]
    first, second = table.iloc[0], table.iloc[1]
    assert first["ahead"] and first["n_next"] == 9 and first["p_next"] == pytest.approx(2 ** -9)
    assert not second["ahead"] and second["p_next"] == pytest.approx(0.5)  # one non-zero difference of nine
    assert first["learnability"] == pytest.approx((1 - (0.25 + (0.5 + 0.01) / 4) / 2))
    assert (first["tasks"], first["configs"], first["seeds"], first["learned"]) == (1, 3, 3, 0)
    assert first["ci"] > 0 and math.isnan(table.iloc[2]["p_next"])


def test_heads_that_never_share_a_configuration_are_not_ranked_apart(tmp_path):
    records = grid(heads=(("linear", None),), vocab=(16,)) + grid(heads=(("lowrank", 2),), vocab=(32,))
    table = head_ranking(*scored_runs(tmp_path, records))
    assert list(table["rank"]) == ["1", "=1"] and table.iloc[0]["n_next"] == 0 and not table.iloc[0]["ahead"]
    assert "no shared runs" in markdown.ranking_markdown(table)


# -- loading and merging ----------------------------------------------------------------------------------------------
def test_merging_two_folders_keeps_one_copy_of_a_repeated_run(tmp_path):
    ours, theirs = grid(heads=(("linear", None),)), grid(heads=(("lowrank", 2),))
    write_all(tmp_path / "a", ours)
    write_all(tmp_path / "b", theirs + ours[:1])
    (tmp_path / "b" / "foreign.json").write_text(json.dumps({"schema": "other.run/9"}))
    with pytest.warns(RuntimeWarning) as caught:
        runs = load_folders([tmp_path / "a", tmp_path / "b"])
    messages = " ".join(str(w.message) for w in caught)
    assert "foreign.json" in messages and "1 run(s) appear in more than one folder" in messages
    assert len(runs) == 18 and runs["run_id"].is_unique
    assert set(runs["folder"]) == {str(tmp_path / "a"), str(tmp_path / "b")}
    assert list(head_ranking(score(runs, cache=FloorCache()), runs)["head"]) == ["linear", "lowrank:2"]


def test_provenance_names_command_commits_devices_versions_and_dates(tmp_path):
    runs = load_folders([write_all(tmp_path, grid(seeds=2, vocab=(16,)))])
    prov = provenance(runs, "spamlang leaderboard x --out y")
    env = environment("cpu")
    assert prov["command"] == "spamlang leaderboard x --out y" and prov["runs"] == 4
    assert prov["commits"] == [str(env.git_commit)] and prov["devices"] == ["cpu"]
    assert prov["torch"] == [env.torch] and prov["python"] == [env.python]
    assert prov["spamlang"] == [env.spamlang] and prov["suites"] == ["hand v3"]
    assert prov["tasks"] == [f"spam v{make_task('spam', {}).version}"]
    assert prov["dates"] == ["2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"]


# -- the command ------------------------------------------------------------------------------------------------------
def test_leaderboard_command_writes_self_contained_files(run_cli, tmp_path):
    write_all(tmp_path / "a", grid(heads=(("linear", None),)))
    write_all(tmp_path / "b", grid(heads=(("lowrank", 2),)))
    out = tmp_path / "board"
    r = run_cli("leaderboard", tmp_path / "a", tmp_path / "b", "--out", out)
    assert r.code == 0, r.err
    assert "## Head ranking" in r.out and "| linear" in r.out and "yes (p=0.002, n=9)" in r.out
    text = (out / "leaderboard.md").read_text()
    assert text.startswith(r.out.rstrip("\n")) and "## Plots" in text and "## Plots" not in r.out
    summary, files = r.err.strip().splitlines()
    assert (summary.startswith("heads: 1 linear (") and "2 lowrank:2" in summary
            and "verdicts of 6 configurations" in summary)
    assert str(out / "leaderboard.md") in files and str(out / "kept_cos.png") in files
    for fragment in (f"spamlang leaderboard {tmp_path / 'a'} {tmp_path / 'b'} --out {out}", "devices: cpu",
                     str(git_commit()), "torch ", "suites: hand v3", "## Configurations", "(learnability.png)"):
        assert fragment in text, fragment
    for name in ("learnability.png", "curves.png", "kept_cos.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    page = (out / "leaderboard.html").read_text()
    # three leaderboard plots and, the runs spanning a V grid, the two scaling-fit figures; each also as SVG, which
    # the page embeds (vector)
    assert page.count("data:image/svg+xml;base64,") == 5 and "data:image/png" not in page and "<style>" in page
    embedded = re.search(r'alt="Learnability[^"]*" src="data:image/svg\+xml;base64,([^"]+)"', page).group(1)
    assert base64.b64decode(embedded) == (out / "learnability.svg").read_bytes()
    assert {"learnability.svg", "steps_to_learn.svg", "direction_D8.svg"} <= {p.name for p in out.iterdir()}
    assert "src=\"http" not in page and "<link" not in page and "<table>" in page
    ranking = pd.read_csv(out / "leaderboard.csv")  # plain tables: no comment lines, numbers typed
    assert list(ranking["head"]) == ["linear", "lowrank:2"] and list(ranking["rank"].astype(str)) == ["1", "2"]
    assert ranking["learnability"].dtype == "float64" and ranking["seeds"].dtype == "int64"
    configurations = pd.read_csv(out / "configurations.csv")
    assert len(configurations) == 6 and configurations["loss"].dtype == "float64"
    sidecar = json.loads((out / "leaderboard.provenance.json").read_text())
    assert sidecar["schema"] == "spamlang.leaderboard-provenance/1" and sidecar["runs"] == 18
    assert sidecar["command"].startswith("spamlang leaderboard") and sidecar["devices"] == ["cpu"]
    assert set(sidecar["tables"]) == {"leaderboard.csv", "configurations.csv", "fit.csv", "control.csv"}
    assert not list(out.glob(".*.tmp"))


def test_leaderboard_format_option_limits_the_tables(run_cli, tmp_path):
    write_all(tmp_path / "a", grid(seeds=2, vocab=(16,)))
    r = run_cli("leaderboard", tmp_path / "a", "--out", tmp_path / "board", "--format", "csv")
    assert r.code == 0, r.err
    assert (tmp_path / "board" / "leaderboard.csv").is_file() and not (tmp_path / "board" / "leaderboard.md").exists()


def test_mixed_task_versions_are_refused(run_cli, tmp_path):
    version = make_task("spam", {}).version
    write_all(tmp_path / "a", grid(heads=(("linear", None),), seeds=1, vocab=(16,)))
    newer = make_record(32, task_version=version + 1)
    write_all(tmp_path / "b", [newer])
    r = run_cli("leaderboard", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "board")
    assert_user_error(r, "task 'spam'", f"v{version} (", f"v{version + 1} (", f"{newer.run_id}.json")
    assert not (tmp_path / "board" / "leaderboard.md").exists()


@pytest.mark.parametrize("make,fragment", [
    (lambda p: p.mkdir(), "no run records under"),
    (lambda p: None, "run folder not found"),
])
def test_a_folder_without_records_is_an_error(run_cli, tmp_path, make, fragment):
    make(tmp_path / "empty")
    assert_user_error(run_cli("leaderboard", tmp_path / "empty"), fragment)


def test_several_folders_need_out(run_cli, tmp_path):
    assert_user_error(run_cli("leaderboard", tmp_path, tmp_path), "--out is required")


# -- too few pairs, missing tasks -------------------------------------------------------------------------------------
def test_min_p_value_is_the_exact_tests_floor():
    assert ranking.min_p_value(4) == wilcoxon_greater([1, 2, 3, 4]) == 0.0625
    assert ranking.min_p_value(5) == wilcoxon_greater([1, 2, 3, 4, 5]) < ranking.ALPHA


def test_too_few_pairs_to_ever_be_significant_are_named(tmp_path):
    scored, runs = scored_runs(tmp_path, grid(seeds=2, vocab=(16, 32)))  # 4 pairs: p >= 1/16 whatever the data
    ranking = head_ranking(scored, runs)
    assert ranking.iloc[0]["n_next"] == 4 and not ranking.iloc[0]["ahead"]
    text = markdown.ranking_markdown(ranking)
    assert "no (p=0.062, n=4; too few pairs: p >= 0.062 whatever the data)" in text
    assert "fewer than 5 pairs can never put one design ahead" in text
    line = markdown.summary(ranking, scored)
    assert line.startswith("heads: 1 linear (") and "=1 lowrank:2" in line and "4 optimization-limited" in line
    assert "1 neighbouring pair(s) share too few runs (< 5) to ever differ" in line
    scored, runs = scored_runs(tmp_path / "b", grid(seeds=3, vocab=(16, 32)))  # 6 pairs: p can reach 1/64
    enough = head_ranking(scored, runs)
    assert "too few" not in markdown.ranking_markdown(enough) and "too few" not in markdown.summary(enough, scored)


def ghost_records(folder):
    """Records of a task that is not registered (as when --tasks-dir is forgotten)."""
    records = []
    for seed in range(2):
        rec = make_record(seed=seed)
        config = dataclasses.replace(rec.config, task="ghost")
        records.append(dataclasses.replace(rec, config=config, run_id=config.run_id))
    return write_all(folder, records)


@pytest.mark.parametrize("verb", ["leaderboard", "score"])
def test_runs_of_unregistered_tasks_are_refused_unless_allowed(run_cli, tmp_path, verb):
    folder = ghost_records(tmp_path / "runs")
    r = run_cli(verb, folder)
    assert_user_error(r, "not registered here: ghost", "--tasks-dir", "--allow-missing-tasks")
    assert len(list(folder.iterdir())) == 2
    r = run_cli(verb, folder, "--allow-missing-tasks")
    assert r.code == 0, r.err
    assert "undetermined" in r.out


def test_a_leaderboard_written_into_its_run_folder_is_rebuilt_there_without_warnings(run_cli, tmp_path):
    """``spamlang leaderboard results/x`` writes beside the records it reads: the second time, its own provenance file
    and floor cache are not taken for malformed records."""
    write_all(tmp_path, grid(heads=(("linear", None),), seeds=1, vocab=(16,)))
    assert run_cli("leaderboard", tmp_path, "--format", "csv").code == 0
    assert (tmp_path / outputs.PROVENANCE_FILE).exists()
    again = run_cli("leaderboard", tmp_path, "--format", "csv")
    assert again.code == 0 and "warning" not in again.err, again.err


def test_the_heatmap_shows_the_configurations_the_ranking_ranks(tmp_path, monkeypatch):
    """A failure rerun at a larger budget adds a row to the scored table, not a configuration to the heatmap."""
    base = dict(task="spam", vocab_size=64, d_model=8, batch_size=16, bayes_loss=0.0, deterministic=True, rank=8)
    own, larger = ({"name": "s", "version": 1, "source": "test", "sweep": ["lr"], "budget_round": r} for r in (0, 1))
    records = [build_record(head="linear", seed=s, losses=(4.0, 3.0), examples_per_symbol=8, suite=own, **base)
               for s in range(3)]
    records += [build_record(head="linear", seed=s, losses=(4.0, 0.0), examples_per_symbol=32, suite=larger, **base)
                for s in range(3)]
    seen = []
    real = board.plots.learnability_heatmap
    monkeypatch.setattr(board.plots, "learnability_heatmap", lambda scored: seen.append(scored) or real(scored))
    runs = load.load_folders([write_all(tmp_path / "runs", records)])
    board.write(runs, tmp_path / "board", formats=("csv",))
    assert len(seen) == 1 and list(seen[0]["examples_per_symbol"]) == [8]
    assert len(pd.read_csv(tmp_path / "board" / "configurations.csv")) == 2
