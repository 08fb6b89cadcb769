"""Corpus exports: npy, nanoGPT's flat .bin and parquet hold the same tokens, read back by corpus.load and by the tools
each format is meant for (np.memmap as nanoGPT calls it, pandas and pyarrow)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from spamlang import make_task
from spamlang.data.corpus import generate, load
from spamlang.errors import SpamLangError
from tests.conftest import assert_user_error

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def corpus(run_cli, folder, fmt, vocab_size=1000, *extra):
    args = ["generate", "bag", "-V", vocab_size, "-T", 16, "-n", 50, "--seed", 4, "--format", fmt, "--out", folder]
    result = run_cli(*args, *extra)
    assert result.code == 0, result.err
    return load(folder)


@pytest.mark.parametrize("vocab_size,npy_dtype,bin_dtype", [(100, "uint8", "uint16"), (1000, "uint16", "uint16"),
                                                            (70000, "uint32", "uint32")])
def test_every_format_holds_the_same_tokens(run_cli, tmp_path, vocab_size, npy_dtype, bin_dtype):
    tokens, meta = corpus(run_cli, tmp_path / "npy", "npy", vocab_size)
    assert tokens.dtype == npy_dtype and tokens.shape == (50, 16) and len(np.unique(tokens)) > 16
    for fmt, dtype in (("bin", bin_dtype), ("parquet", npy_dtype)):
        other, other_meta = corpus(run_cli, tmp_path / fmt, fmt, vocab_size)
        assert other.dtype == dtype and (other == tokens).all()
        assert other_meta["sha256"] == meta["sha256"]  # the hash is of the tokens, not of the file
        assert other_meta["format"] == fmt and other_meta["shape"] == [50, 16] and other_meta["dtype"] == dtype
        assert sorted(p.name for p in (tmp_path / fmt).iterdir()) == sorted(["meta.json", other_meta["file"]])


def test_bin_is_read_as_nanogpt_reads_it(run_cli, tmp_path):
    tokens, _ = corpus(run_cli, tmp_path / "npy", "npy")
    corpus(run_cli, tmp_path / "bin", "bin")
    data = np.memmap(tmp_path / "bin" / "tokens.bin", dtype=np.uint16, mode="r")  # nanoGPT's train.py
    assert data.shape == (50 * 16,) and (data[16 * 7:16 * 8] == tokens[7]).all()
    assert (tmp_path / "bin" / "tokens.bin").stat().st_size == 50 * 16 * 2  # no header


def test_parquet_is_one_row_per_sequence(run_cli, tmp_path):
    tokens, _ = corpus(run_cli, tmp_path / "npy", "npy")
    corpus(run_cli, tmp_path / "pq", "parquet")
    table = pq.read_table(tmp_path / "pq" / "tokens.parquet")
    assert table.column_names == ["input_ids"] and table.num_rows == 50
    assert table.schema.field("input_ids").type == pa.list_(pa.uint16(), 16)
    frame = pd.read_parquet(tmp_path / "pq" / "tokens.parquet")
    assert (np.stack(frame["input_ids"]) == tokens).all()


def test_parquet_in_chunks_equals_one_piece(tmp_path):
    a = generate(make_task("cycle"), 64, 8, 100, 1, tmp_path / "a", fmt="parquet", chunk_tokens=64, progress=False)
    b = generate(make_task("cycle"), 64, 8, 100, 1, tmp_path / "b", fmt="parquet", progress=False)
    assert pq.ParquetFile(tmp_path / "a" / "tokens.parquet").num_row_groups == 13
    assert a == b and (load(tmp_path / "a")[0] == load(tmp_path / "b")[0]).all()


def test_a_corpus_without_a_format_is_npy(run_cli, tmp_path):
    tokens, meta = corpus(run_cli, tmp_path / "c", "npy")
    old = {k: v for k, v in meta.items() if k not in ("format", "file", "shape")}  # a corpus of an earlier version
    (tmp_path / "c" / "meta.json").write_text(json.dumps(old))
    assert (load(tmp_path / "c")[0] == tokens).all()


def test_damaged_corpora_are_refused(run_cli, tmp_path):
    corpus(run_cli, tmp_path / "bin", "bin")
    raw = (tmp_path / "bin" / "tokens.bin").read_bytes()
    (tmp_path / "bin" / "tokens.bin").write_bytes(raw[:-2])
    with pytest.raises(SpamLangError, match="799 tokens, not 50 x 16"):
        load(tmp_path / "bin")
    (tmp_path / "bin" / "tokens.bin").write_bytes(raw[2:] + raw[:2])
    with pytest.raises(SpamLangError, match="sha256"):
        load(tmp_path / "bin")
    corpus(run_cli, tmp_path / "pq", "parquet")
    pq.write_table(pa.table({"input_ids": [[1, 2]] * 50}), tmp_path / "pq" / "tokens.parquet")
    with pytest.raises(SpamLangError, match="not a list of 16 tokens"):
        load(tmp_path / "pq")
    (tmp_path / "pq" / "tokens.parquet").write_bytes(b"not parquet")
    with pytest.raises(SpamLangError, match="not a SpamLang corpus"):
        load(tmp_path / "pq")
    meta = json.loads((tmp_path / "pq" / "meta.json").read_text())
    (tmp_path / "pq" / "meta.json").write_text(json.dumps({**meta, "format": "csv"}))
    with pytest.raises(SpamLangError, match="format must be one of"):
        load(tmp_path / "pq")


def test_bad_formats_are_user_errors(run_cli, tmp_path, monkeypatch):
    base = ["generate", "spam", "-V", 10, "-T", 4, "-n", 2, "--out", tmp_path / "c"]
    assert_user_error(run_cli(*base, "--format", "csv"), "'csv'")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # as if pyarrow were not installed
    assert_user_error(run_cli(*base, "--format", "parquet"), "needs pyarrow")
    assert list(tmp_path.iterdir()) == []


def test_force_replaces_a_corpus_of_another_format(run_cli, tmp_path):
    tokens, _ = corpus(run_cli, tmp_path / "c", "bin")
    assert_user_error(run_cli("generate", "bag", "-V", 1000, "-T", 16, "-n", 50, "--seed", 4, "--format", "parquet",
                              "--out", tmp_path / "c"), "not empty")
    again, meta = corpus(run_cli, tmp_path / "c", "parquet", 1000, "--force")
    assert meta["format"] == "parquet" and (again == tokens).all()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["meta.json", "tokens.parquet"]
