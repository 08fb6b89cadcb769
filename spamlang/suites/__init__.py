"""Built-in suite files (TOML data, read with ``importlib.resources``); the repository's ``benchmarks/suites/`` folder
is this folder."""
