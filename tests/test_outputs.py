"""Nothing lost: --force replaces only a previous output of the tool, and no verb overwrites a file it did not write."""
from __future__ import annotations

import json

import pytest

from spamlang import make_task, record
from spamlang.data.corpus import generate, load
from spamlang.errors import SpamLangError
from tests.conftest import assert_user_error
from tests.test_leaderboard import grid, write_all

GEN = ["generate", "spam", "-V", 16, "-T", 8, "-n", 10]


def user_files(folder):
    """A folder holding a user's file and a subfolder with another."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "keep.txt").write_text("mine")
    (folder / "sub").mkdir()
    (folder / "sub" / "y").write_text("also mine")
    return folder


def assert_user_files(folder):
    assert (folder / "keep.txt").read_text() == "mine" and (folder / "sub" / "y").read_text() == "also mine"


def test_force_refuses_the_working_folder(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(user_files(tmp_path / "here"))
    assert_user_error(run_cli(*GEN, "--out", ".", "--force"), "working folder")
    assert_user_files(tmp_path / "here")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]


def test_force_refuses_a_parent_of_the_working_folder(run_cli, tmp_path, monkeypatch):
    parent = user_files(tmp_path / "par")
    (parent / "child").mkdir()
    monkeypatch.chdir(parent / "child")
    for out in ("..", str(tmp_path)):
        assert_user_error(run_cli(*GEN, "--out", out, "--force"), "working folder")
    assert_user_files(parent)
    assert (parent / "child").is_dir()


def test_force_refuses_a_folder_of_user_files(run_cli, tmp_path):
    out = user_files(tmp_path / "d")
    assert_user_error(run_cli(*GEN, "--out", out, "--force"), "other files")
    assert_user_files(out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "sub"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temporary folder left beside it


def test_force_refuses_a_regular_file(run_cli, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert_user_error(run_cli(*GEN, "--out", afile, "--force"), "is a file")
    assert afile.read_text() == "mine"


def test_force_refuses_a_corpus_with_a_user_file_added(run_cli, tmp_path):
    out = tmp_path / "c"
    assert run_cli(*GEN, "--out", out).code == 0
    (out / "notes.txt").write_text("mine")
    assert_user_error(run_cli(*GEN, "--out", out, "--force"), "other files")
    assert (out / "notes.txt").read_text() == "mine" and load(out)[1]["seed"] == 0


def test_force_replaces_a_previous_corpus_and_leaves_nothing_beside(run_cli, tmp_path):
    out = tmp_path / "c"
    assert run_cli(*GEN, "--out", out).code == 0
    assert run_cli(*GEN, "--seed", 5, "--out", out, "--force").code == 0
    assert load(out)[1]["seed"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_a_failed_replacement_keeps_the_old_corpus(tmp_path, monkeypatch):
    out = tmp_path / "c"
    generate(make_task("spam"), 16, 8, 10, 1, out, progress=False)
    before = (out / "tokens.npy").read_bytes()
    task = make_task("spam")
    monkeypatch.setattr(type(task), "sample", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("task bug")))
    with pytest.raises(RuntimeError, match="task bug"):
        generate(task, 16, 8, 10, 2, out, force=True, progress=False)
    assert (out / "tokens.npy").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_an_empty_folder_is_filled_without_force(run_cli, tmp_path):
    (tmp_path / "c").mkdir()
    assert run_cli(*GEN, "--out", tmp_path / "c").code == 0
    assert load(tmp_path / "c")[1]["num_sequences"] == 10


def test_generate_refuses_a_corpus_larger_than_the_disk(run_cli, tmp_path):
    r = run_cli("generate", "spam", "-V", 16, "-T", 100_000, "-n", 2_000_000_000, "--out", tmp_path / "big")
    assert_user_error(r, "200.0 TB of disk", "free")
    assert list(tmp_path.iterdir()) == []


# -- leaderboard and train outputs ----------------------------------------------------------------------------------
def test_leaderboard_never_replaces_a_file_it_did_not_write(run_cli, tmp_path):
    runs = write_all(tmp_path / "runs", grid(seeds=1, vocab=(16,)))
    out = tmp_path / "board"
    out.mkdir()
    (out / "leaderboard.md").write_text("my notes")
    assert_user_error(run_cli("leaderboard", runs, "--out", out), "leaderboard.md", "not written by")
    assert (out / "leaderboard.md").read_text() == "my notes" and sorted(p.name for p in out.iterdir()) == [
        "leaderboard.md"]
    (out / "leaderboard.md").unlink()
    assert run_cli("leaderboard", runs, "--out", out).code == 0
    assert run_cli("leaderboard", runs, "--out", out).code == 0  # its own files are replaced
    (out / "curves.png").write_bytes(b"\x89PNG\r\n\x1a\n a user's picture")
    assert_user_error(run_cli("leaderboard", runs, "--out", out), "curves.png")
    (out / "curves.png").unlink()
    (out / "models.csv").write_text("model,size\nmine,1\n")  # the name of the models table, not its columns
    assert_user_error(run_cli("leaderboard", runs, "--out", out), "models.csv")


def test_csv_tables_are_known_by_the_hashes_in_the_provenance_file(run_cli, tmp_path):
    runs = write_all(tmp_path / "runs", grid(seeds=1, vocab=(16,)))
    out = tmp_path / "board"
    assert run_cli("leaderboard", runs, "--out", out, "--format", "csv").code == 0
    table = (out / "leaderboard.csv").read_text()
    (out / "leaderboard.csv").write_text(table + "mine,1\n")  # edited by hand: no longer the tool's file
    assert_user_error(run_cli("leaderboard", runs, "--out", out, "--format", "csv"), "leaderboard.csv",
                      "not written by")
    assert (out / "leaderboard.csv").read_text() == table + "mine,1\n"
    (out / "leaderboard.csv").write_text("# command: spamlang leaderboard runs\nrank,head\n")  # an older version's
    assert run_cli("leaderboard", runs, "--out", out, "--format", "csv").code == 0
    assert (out / "leaderboard.csv").read_text() == table
    sidecar = out / "leaderboard.provenance.json"
    # not the tool's provenance file: neither it nor the tables it would vouch for are replaced
    sidecar.write_text("{}")
    assert_user_error(run_cli("leaderboard", runs, "--out", out, "--format", "csv"), "not written by")
    sidecar.unlink()  # without it, nothing says the tables are the tool's
    assert_user_error(run_cli("leaderboard", runs, "--out", out, "--format", "csv"), "leaderboard.csv")


def test_a_table_stays_known_when_the_writing_stops_after_the_provenance_file(run_cli, tmp_path, monkeypatch):
    from spamlang.publishing import outputs
    from spamlang.system import atomic
    runs = write_all(tmp_path / "runs", grid(seeds=1, vocab=(16,)))
    out = tmp_path / "board"
    assert run_cli("leaderboard", runs, "--out", out, "--format", "csv").code == 0
    write_all(runs, grid(seeds=1, vocab=(32,)))  # more runs: new tables
    real = atomic.write_text

    def stop_after_sidecar(path, text):
        if path.suffix == ".csv":
            raise KeyboardInterrupt
        real(path, text)

    monkeypatch.setattr(atomic, "write_text", stop_after_sidecar)
    assert run_cli("leaderboard", runs, "--out", out, "--format", "csv").code == 130
    assert (out / "leaderboard.csv").read_text().count("\n") == 3  # the old table, the new provenance file
    assert json.loads((out / outputs.PROVENANCE_FILE).read_text())["runs"] == 4
    monkeypatch.setattr(atomic, "write_text", real)
    assert run_cli("leaderboard", runs, "--out", out, "--format", "csv").code == 0


def test_train_never_replaces_a_file_that_is_not_its_record(run_cli, tmp_path, monkeypatch):
    from spamlang.config import RunConfig
    args = ["train", "--task", "spam", "--vocab-size", 16, "--d-model", 8, "--layers", 1, "--steps", 2,
            "--eval-every", 2, "--eval-sequences", 4, "--device", "cpu", "--out", tmp_path]
    run_id = RunConfig(task="spam", vocab_size=16, d_model=8, layers=1, steps=2, eval_every=2, eval_sequences=4,
                       device="cpu").resolve().run_id
    (tmp_path / f"{run_id}.json").write_text('{"schema": "spamlang.run/3"}')
    assert_user_error(run_cli(*args), f"{run_id}.json", "spamlang.run/3", "kept")
    assert json.loads((tmp_path / f"{run_id}.json").read_text()) == {"schema": "spamlang.run/3"}
    (tmp_path / f"{run_id}.json").unlink()
    assert run_cli(*args).code == 0
    assert run_cli(*args).code == 0  # its own record is replaced
    assert record.read(tmp_path / f"{run_id}.json").status == "ok"


def test_check_replaceable_api_refuses_without_a_recogniser(tmp_path):
    from spamlang.system.atomic import check_replaceable
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(SpamLangError, match="other files"):
        check_replaceable(tmp_path / "x", True, lambda p: False, "thing")
    check_replaceable(tmp_path / "x", True, lambda p: True, "thing")
    check_replaceable(tmp_path / "new", False, lambda p: False, "thing")



def test_prepare_text_force_follows_the_same_rule(run_cli, tmp_path):
    source = tmp_path / "a.txt"
    source.write_text("one document.\n\nanother document.\n")
    out = tmp_path / "corpus"
    assert run_cli("prepare-text", source, "--out", out).code == 0
    assert run_cli("prepare-text", source, "--out", out, "--force").code == 0  # its own corpus is replaced
    (out / "notes.txt").write_text("mine")
    assert_user_error(run_cli("prepare-text", source, "--out", out, "--force"), "other files")
    assert (out / "notes.txt").read_text() == "mine"
    assert_user_error(run_cli("prepare-text", source, "--out", user_files(tmp_path / "d"), "--force"), "other files")
    assert_user_files(tmp_path / "d")
