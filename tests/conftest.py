"""Shared fixtures: run the CLI in-process and capture its exit status and output."""
from __future__ import annotations

import pytest

from spamlang.cli import main


class Result:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run_cli(capsys):
    """Call ``spamlang`` with a list of arguments; return its exit code, stdout and stderr."""
    def run(*args):
        code = 0
        try:
            main(list(map(str, args)))
        except SystemExit as exc:
            code = exc.code or 0
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)
    return run


def assert_user_error(result, *fragments):
    """Exit status 2, one line on stderr naming the problem, no traceback."""
    assert result.code == 2, (result.code, result.out, result.err)
    lines = result.err.strip().splitlines()
    assert lines and lines[-1].startswith("spamlang: error:"), result.err
    assert "Traceback" not in result.err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


