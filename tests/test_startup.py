"""The command line starts fast: torch is imported only by a command that needs it, and bare 'spamlang' helps."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

#: commands whose start (here: their --help) must not import torch
LIGHT = [["--help"], ["tasks", "--help"], ["suites", "--help"], ["score", "--help"], ["leaderboard", "--help"],
         ["fit", "--help"], ["train", "--help"], ["run", "--help"], ["speedup", "--help"], ["doctor", "--help"],
         ["--version"]]


@pytest.mark.parametrize("args", LIGHT, ids=" ".join)
def test_starting_the_command_line_does_not_import_torch(args):
    code = textwrap.dedent(f"""
        import sys
        from spamlang.cli import main
        try:
            main({args!r})
        except SystemExit as exc:
            assert not exc.code, exc.code
        heavy = sorted(m for m in ("torch", "matplotlib", "pandas") if m in sys.modules)
        print("imported:", *heavy, file=sys.stderr)
        assert "torch" not in sys.modules
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_importing_spamlang_does_not_import_torch_and_the_api_is_still_there():
    code = ("import sys, spamlang; assert 'torch' not in sys.modules; "
            "from spamlang import RunConfig, Task, make_task, TASKS; assert 'spam' in TASKS.names(); "
            "assert RunConfig(task='spam', vocab_size=16).resolve().steps == 300")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_bare_spamlang_prints_the_help_as_help_does(run_cli):
    bare, helped = run_cli(), run_cli("--help")
    assert bare.code == 0 and bare.err == ""
    assert bare.out == helped.out and len(bare.out.splitlines()) > 10 and "Commands:" in bare.out
