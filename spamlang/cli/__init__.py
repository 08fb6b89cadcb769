"""The ``spamlang`` command line: thin wrappers that parse input, call the library and print results.

One module per command group (:mod:`.tasks`, :mod:`.data`, :mod:`.train`, :mod:`.measure`, :mod:`.run`,
:mod:`.results`, :mod:`.doctor`); each registers its commands on the group of :mod:`.app`.
"""
from spamlang.cli import data, doctor, measure, results, run, tasks, train  # noqa: E402,F401 (register the commands)
from spamlang.cli.app import cli, main

__all__ = ["cli", "main"]
