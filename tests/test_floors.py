"""The expressivity floor against known answers: exact fits, impossible fits, analytic floors, sampled estimates."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from spamlang.floors import FloorCache, build_head, entropy, expressivity_floor, fit
from spamlang.task import Targets, make_task


def targets_of(probs: torch.Tensor) -> Targets:
    return Targets(probs, torch.full((len(probs),), 1.0 / len(probs), dtype=torch.float64), True)


def test_rank_r_targets_are_fitted_exactly_by_a_rank_r_head():
    torch.manual_seed(0)
    logits = torch.randn(128, 2, dtype=torch.float64) @ torch.randn(64, 2, dtype=torch.float64).T * 2  # rank 2
    targets = targets_of(torch.softmax(logits, 1))
    excess, vectors = fit(targets, build_head("lowrank", 64, 8, 2))
    assert excess < 0.01  # the loss reaches the targets' entropy
    assert vectors.shape == (128, 8)
    assert entropy(targets) > 1.0  # ...which is not trivially 0


def test_full_rank_targets_are_out_of_reach_of_rank_one():
    targets = targets_of(torch.softmax(5.0 * torch.eye(32, dtype=torch.float64), 1))  # softmax(β I), finite β
    rank_one, _ = fit(targets, build_head("lowrank", 32, 4, 1))
    full, _ = fit(targets, build_head("linear", 32, 31, None))
    assert rank_one > 0.5
    assert full < 0.01


def test_fit_with_a_fixed_head_leaves_the_head_alone():
    targets = targets_of(torch.softmax(3.0 * torch.eye(16, dtype=torch.float64), 1))
    head = build_head("linear", 16, 4, None)
    before = head.weight.detach().clone()
    fit(targets, head, fit_head=False)
    assert torch.equal(head.weight.detach(), before)
    assert head.weight.requires_grad


@pytest.mark.parametrize("task", ["spam", "cycle", "permutation", "shift", "spam-zipf"])
@pytest.mark.parametrize("head,rank", [("lowrank", 2), ("linear", None), ("gradproj", 1), ("tied", None)])
def test_deterministic_tasks_have_an_analytic_zero_floor_from_rank_two(task, head, rank):
    out = expressivity_floor(make_task(task), 4096, 16, head, 8, rank)
    assert out["method"] == "analytic"
    assert out["floor"] == 0.0


def test_rank_one_on_spam_is_estimated_and_far_above_zero():
    out = expressivity_floor(make_task("spam"), 16, 16, "lowrank", 4, 1)
    assert out["method"] == "estimated" and out["exhaustive"]
    assert out["floor"] > 0.5


def test_a_head_as_wide_as_the_vocabulary_has_the_bayes_loss_as_floor():
    task = make_task("spam-noisy", {"p": 0.3})
    out = expressivity_floor(task, 8, 16, "linear", 8, None)
    assert out["method"] == "analytic"
    assert out["floor"] == pytest.approx(task.bayes_loss(8, 16))


def test_bag_with_k_well_above_the_rank_has_a_floor_well_above_bayes():
    task = make_task("bag", {"k": 16})
    out = expressivity_floor(task, 64, 12, "lowrank", 8, 2, contexts=128)
    assert out["method"] == "estimated" and not out["exhaustive"]
    assert out["floor"] > task.bayes_loss(64, 12) + 0.15
    wide = expressivity_floor(task, 64, 12, "linear", 32, None, contexts=128)
    assert wide["floor"] < out["floor"] - 0.05  # more rank, lower floor


def test_sampled_estimates_are_stable_as_the_sample_grows():
    task = make_task("bag", {"k": 4})
    out = expressivity_floor(task, 32, 8, "lowrank", 8, 1, contexts=128)
    bayes = task.bayes_loss(32, 8)
    assert out["floor"] > bayes + 0.1
    assert abs(out["floor"] - out["floor_small"]) < 0.05 * (out["floor"] - bayes)
    assert out["floor_fit"] <= out["floor"] + 0.01  # the fitted sample is the easier one


def test_gradproj_has_the_linear_heads_floor():
    task = make_task("bag", {"k": 8})
    linear = expressivity_floor(task, 32, 8, "linear", 2, None, contexts=64)
    gradproj = expressivity_floor(task, 32, 8, "gradproj", 2, 1, contexts=64)
    assert gradproj["floor"] == pytest.approx(linear["floor"], abs=1e-6)


def test_no_target_distributions_means_no_floor():
    class Opaque(type(make_task("spam-noisy"))):
        def target_distributions(self, vocab_size, seq_len, num_contexts, generator):
            return None
    out = expressivity_floor(Opaque(), 16, 8, "lowrank", 4, 1)
    assert out["method"] == "unavailable" and out["floor"] is None


def test_the_floor_leaves_the_global_generator_alone():
    state = torch.get_rng_state()
    expressivity_floor(make_task("spam"), 8, 8, "lowrank", 4, 1)
    assert torch.equal(torch.get_rng_state(), state)


def test_cache_in_memory_and_on_disk(tmp_path, monkeypatch):
    path = tmp_path / "floors.cache.json"
    cache = FloorCache(path)
    first = expressivity_floor(make_task("spam"), 8, 8, "lowrank", 4, 1, cache=cache)
    assert len(json.loads(path.read_text())) == 1
    monkeypatch.setattr("spamlang.floors._estimate", lambda *a: pytest.fail("recomputed a cached floor"))
    assert expressivity_floor(make_task("spam"), 8, 8, "lowrank", 4, 1, cache=cache) == first
    assert expressivity_floor(make_task("spam"), 8, 8, "lowrank", 4, 1, cache=FloorCache(path)) == first


def test_a_corrupt_cache_file_is_reported_and_ignored(tmp_path):
    path = tmp_path / "floors.cache.json"
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="floor cache not readable"):
        cache = FloorCache(path)
    assert len(cache) == 0
    expressivity_floor(make_task("spam"), 8, 8, "lowrank", 2, 2, cache=cache)
    assert len(json.loads(path.read_text())) == 1


def test_the_scorer_side_never_imports_the_trainer():
    code = "import sys, spamlang.floors, spamlang.scorer; sys.exit('spamlang.harness' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
