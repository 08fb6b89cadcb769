"""`spamlang measure` on tiny random checkpoints of three architectures, checked against brute force."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

from spamlang.diagnostics import orthonormal_basis  # noqa: E402
from spamlang.measure import spectrum as spec  # noqa: E402
from spamlang.measure import text  # noqa: E402

from . import hf_models  # noqa: E402
from .conftest import assert_user_error  # noqa: E402

RESULTS = Path(__file__).resolve().parent.parent / "results" / "smoke" / "runs"
ARCHS = [("gpt2", True), ("llama", False), ("neox", False)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("measure")
    for arch, tied in ARCHS:
        hf_models.checkpoint(root / arch, arch, tied, init_std=0.4)
    (root / "wiki.txt").write_text("\n".join(hf_models.corpus()) + "\n")
    return root


def run_measure(run_cli, model, *args):
    result = run_cli("measure", model, "--json", "-q", *args)
    assert result.code == 0, result.err
    return json.loads(result.out)


def brute_force(model_dir, windows, n):
    """Every quantity from the model's own full logits and output embedding, in float64."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=torch.float64)
    ids = torch.as_tensor(windows)
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    z = out.logits[:, :-1].reshape(-1, out.logits.shape[-1])[:n]  # (N, V)
    h = out.hidden_states[-1][:, :-1].reshape(-1, out.hidden_states[-1].shape[-1])[:n]  # (N, D)
    y = ids[:, 1:].reshape(-1)[:n]
    w = model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(h @ w.T, z)  # the hidden states are what the head reads
    g = (F.softmax(z, 1) - F.one_hot(y, w.shape[0]).double()) / n
    return h, y, w, z, g


@pytest.mark.parametrize("arch,tied", ARCHS)
def test_measure_matches_brute_force(run_cli, folder, tmp_path, arch, tied):
    n, seq_len = 150, 16
    [rec] = run_measure(run_cli, folder / arch, "--text", folder / "wiki.txt", "--tokens", n, "--seq-len", seq_len,
                        "--seed", 3, "--dtype", "float64", "--step-norm", 0.5, "--out", tmp_path)
    assert rec["schema"] == "spamlang.measure/1" and rec["model"]["tied"] is tied
    assert (tmp_path / f"{rec['measure_id']}.json").is_file()
    from transformers import AutoTokenizer
    stream = text.tokenize([text.describe(folder / "wiki.txt")], AutoTokenizer.from_pretrained(folder / arch), 10**9)
    windows = text.windows(stream, seq_len, n, 3)
    h, y, w, z, g = brute_force(folder / arch, windows, n)
    q = orthonormal_basis(w)
    ratio = ((g - g @ q @ q.T).norm(dim=1) / g.norm(dim=1)).numpy()
    pt = rec["per_token"]
    assert rec["model"]["head_rank"] == q.shape[1] == 24
    assert pt["destroyed"]["mean"] == pytest.approx(ratio.mean(), rel=1e-9)
    assert pt["destroyed"]["q50"] == pytest.approx(np.quantile(ratio, 0.5), rel=1e-9)
    assert pt["kept_cos"]["mean"] == pytest.approx(np.sqrt(1 - ratio ** 2).mean(), rel=1e-9)
    assert pt["baseline"] == pytest.approx(math.sqrt(1 - 24 / hf_models.VOCAB))
    sv2 = torch.linalg.svdvals(g).numpy() ** 2
    share = np.cumsum(sv2) / sv2.sum()
    for level, (lo, hi) in rec["spectrum"]["components"].items():
        assert lo == hi == int(np.argmax(share >= float(level) / 100)) + 1
    assert rec["spectrum"]["share_2r"][0] == pytest.approx(share[47], rel=1e-9)
    loss = F.cross_entropy(z, y).item()
    eps = 0.5 * math.sqrt(n)
    dz = -(g @ w) @ w.T - h @ (g.T @ h).T
    upd = rec["update"]
    assert upd["loss"] == pytest.approx(loss, rel=1e-9)
    assert upd["ideal"]["actual"] == pytest.approx(loss - F.cross_entropy(z - eps * g / g.norm(), y).item(), rel=1e-7)
    assert upd["cosine"] == pytest.approx(float((-g * dz).sum() / (g.norm() * dz.norm())), rel=1e-7)
    eta = eps / dz.norm()
    moved = (h - eta * g @ w) @ (w - eta * g.T @ h).T
    assert upd["realisable"]["actual"] == pytest.approx(loss - F.cross_entropy(moved, y).item(), rel=1e-7)
    assert rec["timing"]["tokens_per_second"] > 0 and rec["text"]["files"][0]["sha256"]
    assert rec["env"]["threads"] == torch.get_num_threads() and rec["env"]["transformers"]


def test_random_head_sits_at_the_isotropic_baseline(run_cli, tmp_path):
    hf_models.checkpoint(tmp_path / "m", "llama", False, init_std=0.02)
    (tmp_path / "t.txt").write_text("\n".join(hf_models.corpus()))
    [rec] = run_measure(run_cli, tmp_path / "m", "--text", tmp_path / "t.txt", "--tokens", 1500, "--seq-len", 32,
                        "--out", tmp_path / "out")
    assert rec["per_token"]["destroyed"]["mean"] == pytest.approx(rec["per_token"]["baseline"], abs=0.01)
    assert len(rec["per_token"]["by_position"]) == 5  # context lengths 1, 2-3, 4-7, 8-15, 16-31


def test_float32_default_agrees_and_formats_give_the_same_tokens(run_cli, folder, tmp_path):
    docs = hf_models.corpus()
    (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa
    pq.write_table(pa.table({"text": docs}), tmp_path / "d.parquet")
    args = ("--tokens", 300, "--seq-len", 20, "--out", tmp_path / "out")
    [a] = run_measure(run_cli, folder / "gpt2", "--text", tmp_path / "d.jsonl", *args)
    [b] = run_measure(run_cli, folder / "gpt2", "--text", tmp_path / "d.parquet", *args)
    assert a["text"]["tokens_read"] == b["text"]["tokens_read"]
    assert a["per_token"] == b["per_token"] and a["spectrum"] == b["spectrum"]
    [c] = run_measure(run_cli, folder / "gpt2", "--text", tmp_path / "d.jsonl", *args, "--dtype", "float64")
    assert a["per_token"]["destroyed"]["mean"] == pytest.approx(c["per_token"]["destroyed"]["mean"], abs=1e-5)


def test_pretokenized_npy_needs_no_tokenizer(run_cli, tmp_path):
    model = hf_models.checkpoint(tmp_path / "m", "gpt2", True, with_tokenizer=False)
    tokens = np.random.default_rng(0).integers(0, hf_models.VOCAB, (40, 12), dtype=np.uint16)
    np.save(tmp_path / "tokens.npy", tokens)
    [rec] = run_measure(run_cli, model, "--text", tmp_path / "tokens.npy", "--tokens", 200, "--out", tmp_path / "o")
    assert rec["tokenizer"] is None and rec["text"]["seq_len"] == 12 and rec["text"]["windows"] == 19


def test_trajectory_folder_is_measured_in_step_order(run_cli, folder, tmp_path):
    for step, seed in ((1000, 1), (200, 2)):
        hf_models.checkpoint(tmp_path / "run" / f"step{step}", "gpt2", True, seed=seed, with_tokenizer=False)
    hf_models.tokenizer(tmp_path / "run")  # shared by the checkpoints, in the trajectory's folder
    records = run_measure(run_cli, tmp_path / "run", "--text", folder / "wiki.txt", "--tokens", 100,
                          "--out", tmp_path / "out")
    assert [r["model"]["step"] for r in records] == [200, 1000]
    assert len(list((tmp_path / "out").glob("*.json"))) == 2
    table = run_cli("measure", tmp_path / "run", "--text", folder / "wiki.txt", "--tokens", 100, "-q",
                    "--out", tmp_path / "out")
    assert table.code == 0 and "step200" in table.out and "| baseline" in table.out.replace("  ", " ")


def test_sketch_bounds_contain_the_exact_spectrum(run_cli, folder, tmp_path):
    args = ("--text", folder / "wiki.txt", "--tokens", 400, "--seq-len", 16, "--out", tmp_path, "--dtype", "float64")
    [exact] = run_measure(run_cli, folder / "llama", *args, "--spectrum", "exact")
    [sketch] = run_measure(run_cli, folder / "llama", *args, "--spectrum", "sketch", "--sketch-size", 40)
    assert sketch["spectrum"]["method"] == "frequent-directions" and sketch["spectrum"]["error_bound"] > 0
    for level, (lo, hi) in sketch["spectrum"]["components"].items():
        k = exact["spectrum"]["components"][level][0]
        assert lo <= k and (hi is None or k <= hi)


# -- bad input: one line, status 2, nothing written -------------------------------------------------------------------
@pytest.fixture
def bad(run_cli, folder, tmp_path):
    def check(model, *args, fragment):
        out = tmp_path / "out"
        result = run_cli("measure", model, "--out", out, "-q", *args)
        assert_user_error(result, fragment)
        assert not out.exists() or not any(out.iterdir())
    return check


def test_not_a_checkpoint(bad, folder, tmp_path):
    (tmp_path / "empty").mkdir()
    bad(tmp_path / "empty", "--text", folder / "wiki.txt", fragment="not a checkpoint")
    bad(tmp_path / "nowhere", "--text", folder / "wiki.txt", fragment="not found")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{")
    bad(tmp_path / "broken", "--text", folder / "wiki.txt", fragment="not readable as JSON")
    (tmp_path / "run.pt").write_bytes(b"")
    bad(tmp_path / "run.pt", "--text", folder / "wiki.txt", fragment="spamlang probe")


def test_model_without_output_embedding(bad, folder, tmp_path):
    from transformers import LlamaModel
    LlamaModel(hf_models.config("llama", tied=False)).save_pretrained(tmp_path / "base")
    hf_models.tokenizer(tmp_path / "base")
    bad(tmp_path / "base", "--text", folder / "wiki.txt", "--tokens", 20, fragment="no output embedding")


def test_empty_and_non_utf8_text(bad, folder, tmp_path):
    (tmp_path / "empty.txt").write_text("  \n")
    bad(folder / "gpt2", "--text", tmp_path / "empty.txt", fragment="empty")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    bad(folder / "gpt2", "--text", tmp_path / "latin1.txt", fragment="not UTF-8")
    (tmp_path / "x.csv").write_text("a,b")
    bad(folder / "gpt2", "--text", tmp_path / "x.csv", fragment="unknown text format")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text"}\n')
    bad(folder / "gpt2", "--text", tmp_path / "bad.jsonl", fragment="bad.jsonl:2")


def test_tokenizer_missing(bad, folder, tmp_path):
    shutil.copytree(folder / "neox", tmp_path / "m")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / "m" / name).unlink()
    bad(tmp_path / "m", "--text", folder / "wiki.txt", fragment="no tokenizer")


def test_more_tokens_than_exist(bad, folder):
    bad(folder / "gpt2", "--text", folder / "wiki.txt", "--tokens", 10**6, fragment="tokens requested")


def test_model_too_large_for_memory(bad, folder):
    bad(folder / "gpt2", "--text", folder / "wiki.txt", "--max-memory", 0.001, fragment="allowed by --max-memory")


def test_bad_settings(bad, folder):
    bad(folder / "gpt2", "--text", folder / "wiki.txt", "--seq-len", 500, fragment="exceeds the model's 64")
    bad(folder / "gpt2", "--text", folder / "wiki.txt", "--step-norm", 0, fragment="step-norm")


def test_exact_energies_are_those_of_g(folder):
    """The streamed N x N Gram path on a real model's hidden states (N < V)."""
    from transformers import AutoTokenizer
    stream = text.tokenize([text.describe(folder / "wiki.txt")], AutoTokenizer.from_pretrained(folder / "gpt2"), 10**9)
    h, y, w, _, g = brute_force(folder / "gpt2", text.windows(stream, 16, 60, 0), 60)
    lam = spec.exact_energies(h, y, w, chunk=9)
    np.testing.assert_allclose(lam.numpy(), torch.linalg.svdvals(g * 60).numpy() ** 2, rtol=1e-8, atol=1e-12)


def test_leaderboard_merges_measurement_folders(run_cli, folder, tmp_path):
    for arch in ("gpt2", "llama"):
        run_measure(run_cli, folder / arch, "--text", folder / "wiki.txt", "--tokens", 120, "--out", tmp_path / "m")
    alone = run_cli("leaderboard", tmp_path / "m", "--out", tmp_path / "board")
    assert alone.code == 0, alone.err
    assert "## Models" in alone.out and "| gpt2" in alone.out and "| llama" in alone.out
    names = {p.name for p in (tmp_path / "board").iterdir()}
    assert {"leaderboard.md", "leaderboard.html", "models.csv", "models_destroyed.png", "models_spectrum.png"} <= names
    assert "data:image/png;base64" in (tmp_path / "board" / "leaderboard.html").read_text()
    again = run_cli("leaderboard", tmp_path / "m", "--out", tmp_path / "board")  # its own files, models.csv too
    assert again.code == 0, again.err
    (tmp_path / "runs").mkdir()
    configs = {p: json.loads(p.read_text())["config"] for p in sorted(RESULTS.glob("*.json"))}
    published = [p for p, c in configs.items()
                 if (c["task"], c["vocab_size"], c["head"]) == ("spam", 128, "linear")][:3]
    assert len(published) == 3
    for path in published:
        shutil.copy(path, tmp_path / "runs")
    mixed = run_cli("leaderboard", tmp_path / "runs", tmp_path / "m", "--out", tmp_path / "both")
    assert mixed.code == 0, mixed.err
    assert "## Head ranking" in mixed.out and "## Models" in mixed.out
    assert (tmp_path / "both" / "models.csv").read_text().count("\n") == 3
