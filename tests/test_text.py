"""Text corpora as tasks: preparation, BPE at V and its cache, the document split, windows, records, bad input."""
from __future__ import annotations

import dataclasses
import json
import math
import random

import numpy as np
import pytest
import torch

from spamlang import Rng
from spamlang.config import RunConfig
from spamlang.data.textcorpus import prepare, split_of
from spamlang.task import make_task
from tests.conftest import assert_user_error

tokenizers = pytest.importorskip("tokenizers")

WORDS = ("the river runs past an old mill where children play while their parents watch the slow boats carry grain "
         "and timber down towards a harbour town full of noisy markets bright sails and tired sailors").split()


def documents(n: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60))).capitalize() + "." for _ in range(n)]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("SPAMLANG_CACHE", str(folder))
    return folder


@pytest.fixture
def corpus(tmp_path, cache):
    """A prepared corpus of 60 documents (40 as paragraphs of a .txt file, 20 as JSON lines)."""
    docs = documents()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("\n\n".join(docs[:40]) + "\n")
    (tmp_path / "src" / "b.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[40:]))
    out = tmp_path / "corpus"
    meta = prepare([str(tmp_path / "src")], out)
    assert meta["documents"] == 60
    return out


def text_task(corpus, **params):
    return make_task("text", {"corpus": str(corpus), "holdout": 0.2, **params})


def test_split_is_by_document_and_covers_each_once(corpus):
    from tokenizers import Tokenizer
    arrays = text_task(corpus).arrays(300)
    docs = documents()
    expected = {s: sorted(d for d in docs if split_of(d, 0, 0.2) == s) for s in ("train", "val", "test")}
    assert all(expected.values()) and sum(map(len, expected.values())) == len(docs)
    tokenizer = Tokenizer.from_file(str(arrays.folder / "tokenizer.json"))
    eos = arrays.meta["tokenizer"]["eos_id"]
    for split, want in expected.items():
        ids = np.asarray(arrays.splits[split]).tolist()
        pieces, start = [], 0
        for i, t in enumerate(ids):
            if t == eos:
                pieces.append(tokenizer.decode(ids[start:i]))
                start = i + 1
        assert sorted(pieces) == want, split  # every document of the split, and none of another
    assert arrays.meta["documents"] == {s: len(v) for s, v in expected.items()}


def test_split_does_not_depend_on_order_and_changes_with_seed():
    docs = documents(200)
    first = [split_of(d, 0, 0.1) for d in docs]
    assert first == [split_of(d, 0, 0.1) for d in docs]
    assert first != [split_of(d, 1, 0.1) for d in docs]
    assert 0.1 < sum(s != "train" for s in first) / len(first) < 0.3


def test_bpe_has_exactly_v_tokens_is_cached_and_deterministic(corpus, cache, tmp_path, monkeypatch):
    from spamlang.data import tokenizer as tok
    arrays = text_task(corpus).arrays(300)
    meta = arrays.meta
    assert meta["tokenizer"]["vocab_size"] == 300 and meta["tokenizer"]["kind"] == "bpe"
    assert json.loads((arrays.folder / "tokenizer.json").read_text())["model"]["vocab"].__len__() == 300
    assert max(int(a.max()) for a in arrays.splits.values()) < 300
    # a second load reads the cache: no training
    monkeypatch.setattr(tok, "_train_bpe", lambda *a, **k: pytest.fail("retrained a cached tokenizer"))
    again = tok.load(corpus, "bpe", 300, 0, 0.2)
    assert again.folder == arrays.folder and again.meta == meta
    monkeypatch.undo()
    # a fresh cache trains the same tokenizer and the same tokens
    monkeypatch.setenv("SPAMLANG_CACHE", str(tmp_path / "other-cache"))
    fresh = tok.load(corpus, "bpe", 300, 0, 0.2)
    assert fresh.folder != arrays.folder
    assert fresh.meta["tokenizer"]["sha256"] == meta["tokenizer"]["sha256"]
    assert all(np.array_equal(fresh.splits[s], arrays.splits[s]) for s in arrays.splits)
    assert not list(cache.rglob("*.tmp")) and not list((tmp_path / "other-cache").rglob("*.tmp"))


def test_windows_are_deterministic_and_come_from_the_stream_split(corpus):
    task = text_task(corpus)
    a = task.sample(12, 8, 300, Rng(3, "val"))
    assert a.dtype == torch.int64 and a.shape == (12, 8)
    assert torch.equal(a, task.sample(12, 8, 300, Rng(3, "val")))
    assert torch.equal(task.sample(6, 8, 300, Rng(3, "val"), offset=4), a[4:10])
    assert not torch.equal(a, task.sample(12, 8, 300, Rng(4, "val")))
    for split in ("train", "val", "test"):
        tokens = np.asarray(task.arrays(300).splits[split])
        windows = np.lib.stride_tricks.sliding_window_view(tokens, 8)
        for row in task.sample(10, 8, 300, Rng(0, 7, split)).numpy():
            assert (windows == row).all(axis=1).any(), split  # a window of its own split's tokens


def test_training_records_corpus_and_tokenizer_and_scores_na(corpus, tmp_path):
    from spamlang.record import write
    from spamlang.scoring.frames import load_runs
    from spamlang.scoring.scorer import score
    from spamlang.training.loop import train
    config = RunConfig(task="text", vocab_size=300, task_params={"corpus": str(corpus), "holdout": 0.2}, d_model=16,
                       layers=1, seq_len=12, batch_size=8, steps=6, eval_every=3, eval_sequences=8, diag_tokens=16,
                       head="lowrank", head_rank=4, device="cpu")
    rec = train(config, progress=False)
    assert rec.status == "ok" and math.isnan(rec.bayes_loss)
    corpus_meta = json.loads((corpus / "meta.json").read_text())
    assert rec.data["corpus_sha256"] == corpus_meta["sha256"]
    assert rec.data["tokenizer"]["kind"] == "bpe" and len(rec.data["tokenizer"]["sha256"]) == 64
    assert json.loads(rec.to_json())["bayes_loss"] is None
    assert [p.tokens for p in rec.history] == [0, 3 * 96, 6 * 96]
    assert all(p.test_bayes_loss is None and p.test_bayes_gap_se is None for p in rec.history)  # no log_prob
    assert rec.final.test_unigram_loss < rec.final.test_uniform_loss == pytest.approx(math.log(300))
    assert rec.final.examples_per_symbol == pytest.approx(6 * 8 * 11 / 300)  # every predictable position teaches
    again = train(config, progress=False)
    assert again.final.val_loss == rec.final.val_loss  # same seed, same metrics on the CPU
    write(rec, tmp_path / "runs")
    scored = score(load_runs(tmp_path / "runs"))
    assert scored.iloc[0]["verdict"] == "no-learning"  # 6 steps: no better than the trivial predictors
    low = rec.final.test_unigram_loss - 1  # the final repeats the last evaluation: both are changed
    better = dataclasses.replace(rec, final=dataclasses.replace(rec.final, loss=low),
                                 history=(*rec.history[:-1], dataclasses.replace(rec.history[-1], test_loss=low)))
    write(better, tmp_path / "better")  # well below them: nothing to judge it by
    assert score(load_runs(tmp_path / "better")).iloc[0]["verdict"] == "n/a"


def test_huggingface_tokenizer_folder(corpus, tmp_path):
    arrays = text_task(corpus).arrays(300)
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_bytes((arrays.folder / "tokenizer.json").read_bytes())
    hf = text_task(corpus, tokenizer=str(folder)).arrays(300)
    assert hf.meta["tokenizer"]["kind"] == "huggingface"
    assert np.array_equal(hf.splits["val"], arrays.splits["val"])
    with pytest.raises(Exception, match="has 300 tokens; set vocab_size to 300"):
        text_task(corpus, tokenizer=str(folder)).arrays(512)


def test_parquet_source(tmp_path, cache):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.table({"text": documents(5), "id": list(range(5))}), tmp_path / "d.parquet")
    assert prepare([str(tmp_path / "d.parquet")], tmp_path / "out")["documents"] == 5


# -- bad input: one line, status 2, nothing half-written ------------------------------------------------------------
def test_prepare_text_bad_input(run_cli, tmp_path, cache):
    (tmp_path / "empty.txt").write_text("\n \n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    for source, fragment in (("empty.txt", "no documents"), ("latin1.txt", "not UTF-8"), ("bad.jsonl", "line 2"),
                             ("missing.txt", "not found")):
        result = run_cli("prepare-text", tmp_path / source, "--out", tmp_path / "out", "-q")
        assert_user_error(result, fragment)
        assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_vocabulary_larger_than_the_corpus_supports(run_cli, corpus, cache, tmp_path):
    result = run_cli("train", "--task", "text", "-p", f"corpus={corpus}", "-p", "holdout=0.2", "--vocab-size",
                     "60000", "--steps", "1", "--device", "cpu", "--out", tmp_path / "runs", "-q")
    assert_user_error(result, "supports at most", "vocab_size 60000")
    assert not (cache / "tokens").exists() or not any((cache / "tokens").iterdir())
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))


@pytest.mark.parametrize("params,fragment", [
    (["-p", "tokenizer=/no/such/folder"], "tokenizer folder not found"),
    (["-p", "corpus=/no/such/corpus"], "neither a built-in corpus"),
])
def test_missing_tokenizer_or_corpus(run_cli, tmp_path, cache, params, fragment):
    result = run_cli("train", "--task", "text", *params, "--vocab-size", "300", "--steps", "1", "--device", "cpu",
                     "--out", tmp_path / "runs", "-q")
    assert_user_error(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_bpe_needs_the_byte_alphabet(run_cli, corpus, tmp_path):
    result = run_cli("train", "--task", "text", "-p", f"corpus={corpus}", "--vocab-size", "100", "--steps", "1",
                     "--device", "cpu", "--out", tmp_path / "runs", "-q")
    assert_user_error(result, "vocab_size >= 257")


def test_leaderboard_of_text_runs_has_tokens_to_target(run_cli, corpus, tmp_path):
    from spamlang import record
    from spamlang.training.loop import train
    for head, rank in (("linear", None), ("lowrank", 2)):
        config = RunConfig(task="text", vocab_size=300, task_params={"corpus": str(corpus), "holdout": 0.2},
                           d_model=16, layers=1, seq_len=12, batch_size=8, steps=6, eval_every=2, eval_sequences=8,
                           diag_tokens=16, head=head, head_rank=rank, device="cpu")
        record.write(train(config, progress=False), tmp_path / "runs")
    result = run_cli("leaderboard", tmp_path / "runs", "--out", tmp_path / "board")
    assert result.code == 0, result.err
    assert "## Tokens to target" in result.out and "lowrank:2" in result.out
    assert "| no-learning" in result.out  # 6 steps: worse than the unigram predictor; never a floor-based verdict
    assert (tmp_path / "board" / "speedup.csv").is_file() and (tmp_path / "board" / "tokens.png").is_file()


def test_text_task_passes_the_task_checks(corpus):
    from spamlang.data.validate import validate
    results = validate(text_task(corpus), 300, 12, 64)
    assert all(r.ok for r in results), [(r.name, r.detail) for r in results if not r.ok]
    assert "none known" in next(r.detail for r in results if r.name == "bayes loss")
