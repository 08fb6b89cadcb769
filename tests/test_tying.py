"""Tying and copy tasks: the declarations, checked against a tied model at initialisation, and their marks in the
scorer's table and the leaderboard."""
from __future__ import annotations

import pytest

from spamlang import record
from spamlang.config import RunConfig
from spamlang.heads.base import HEADS
from spamlang.publishing import markdown
from spamlang.publishing.load import load_folders
from spamlang.publishing.ranking import head_ranking, without_copy_tasks
from spamlang.publishing.tables import format_table
from spamlang.scoring.floors import FloorCache
from spamlang.scoring.scorer import score
from spamlang.task import make_task
from spamlang.training.loop import train
from tests.records import make_record

TASKS = [("spam", {}), ("spam-zipf", {}), ("spam-noisy", {}), ("cycle", {"k": 1}), ("cycle", {"k": 3}),
         ("permutation", {}), ("shift", {}), ("bag", {})]


def test_only_the_tied_head_shares_the_embedding():
    assert {name for name in HEADS.names() if HEADS.get(name).shares_embedding} == {"tied"}


@pytest.mark.parametrize("task,params", TASKS)
def test_a_task_copies_its_input_exactly_when_a_tied_head_starts_solving_it(task, params):
    """At initialisation (lr ~ 0), a tied head's accuracy is far above chance on a task whose target is the current
    input token, and near chance elsewhere; an untied head is near chance on both."""
    def accuracy(head):
        config = RunConfig(task=task, task_params=params, vocab_size=256, d_model=16, layers=1, n_heads=2, seq_len=6,
                           batch_size=8, steps=1, eval_every=1, eval_sequences=64, diag_tokens=8, head=head, lr=1e-9,
                           device="cpu")
        return train(config, progress=False, threads=1).history[0].test_accuracy

    copies = make_task(task, params).copies_input()
    assert copies == (task.startswith("spam") or params == {"k": 1})
    assert (accuracy("tied") > 0.2) == copies and accuracy("linear") < 0.05


def test_copy_tasks_are_marked_and_ranked_apart(tmp_path):
    runs_dir = tmp_path / "runs"
    for task, params in (("spam", {}), ("shift", {})):
        for head in ("linear", "tied"):
            for seed in range(3):
                losses = (4.0, 0.0) if head == "tied" and task == "spam" else (4.0, 1.0 + 0.1 * (head == "tied"))
                record.write(make_record(task=task, task_params=params, vocab_size=16, d_model=8, head=head,
                                         seed=seed, losses=losses), runs_dir)
    runs = load_folders([runs_dir])
    scored = score(runs, cache=FloorCache())
    marked = {(row["task"], row["head"]) for _, row in scored.iterrows() if row["copy_at_init"]}
    assert marked == {("spam", "tied")}
    assert list(scored["copies_input"]) == [row["task"] == "spam" for _, row in scored.iterrows()]
    table = format_table(scored, "md")
    assert table.count("+copy@init") == 2  # the marked row and the legend
    kept = without_copy_tasks(scored)
    assert set(kept["task"]) == {"shift"} and len(kept) == 2
    section = markdown.copy_free_ranking_markdown(scored, runs)
    assert section.startswith("## Head ranking without copy tasks") and "copy solution on spam" in section
    ranking = head_ranking(kept, runs)
    assert list(ranking["head"]) == ["linear", "tied"] and set(ranking["tasks"]) == {1}
    assert list(head_ranking(scored, runs)["head"]) == ["tied", "linear"]  # tied wins on spam
    untied = score(runs[runs["head"] == "linear"].reset_index(drop=True), cache=FloorCache())
    assert without_copy_tasks(untied) is None and "+copy@init" not in format_table(untied, "md")
    assert markdown.copy_free_ranking_markdown(untied, runs) == ""
