"""The worked example under examples/ runs as its docstring says: runs trained, scored and plotted."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import spamlang

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_trains_scores_and_plots(tmp_path, capsys):
    load_example("quickstart").main([str(tmp_path), "--steps", "60", "--seeds", "1"])
    out = capsys.readouterr().out
    assert "| spam | linear" in out and "| spam | lowrank:2" in out and f"wrote {tmp_path / 'curves.png'}" in out
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runs = spamlang.load_runs(tmp_path / "runs").set_index("head_spec")
    assert len(runs) == 2 and set(runs["status"]) == {"ok"}
    assert runs.loc["linear", "final_loss"] < runs.loc["lowrank:2", "final_loss"]  # the rank-2 head learns slower
