"""Suites: TOML files (data, never code) whose grids expand to run configurations, all checked before any run.

Format (see ``benchmarks/suites/smoke.toml``)::

    [suite]                      # name, description, version; optional sweep = ["lr"] (selected on val) and
                                 # extend_budget = 4 (rerun what is not learned at 4x the budget, see runner)
    [defaults]                   # RunConfig settings shared by every run
    [[grid]]                     # one or more grids; every list expands as a Cartesian product
    head = ["linear", "lowrank:2"]   # "name:rank" gives a head and its rank
    task_params = { k = [4, 32] }    # lists inside task_params / head_params expand too
    exclude = [{ head = "linear", vocab_size = 256 }]   # drop runs matching every key of an entry
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from spamlang.config import SWEEPABLE, ResolvedConfig, RunConfig
from spamlang.errors import SpamLangError
from spamlang.system.threads import step_flops

SUITE_KEYS = {"name", "description", "version", "sweep", "extend_budget"}
NESTED = ("task_params", "head_params")
CONFIG_KEYS = {f.name for f in dataclasses.fields(RunConfig)}
#: the most runs a suite's grids may expand to (counted before any is built; the largest built-in suite has 756)
MAX_RUNS = 20_000


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    version: int
    sweep: tuple[str, ...]
    runs: tuple[ResolvedConfig, ...]
    source: str
    #: the factor by which the runner multiplies the budget of a configuration not learned (None: no extension)
    extend_budget: float | None = None

    def estimated_flops(self) -> float:
        """Training FLOPs of all runs: about 6 x (parameters touched per token) x tokens, head included."""
        return sum(step_flops(c) * c.steps for c in self.runs)


def builtin_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("spamlang.suites").iterdir() if p.name.endswith(".toml"))


def locate(name_or_file: str) -> Path:
    """A path to a suite file, or the built-in suite of that name (a folder of that name, such as a suite's results,
    does not hide it)."""
    path = Path(name_or_file)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise SpamLangError(f"suite file not found: {path}")
        return path
    candidate = resources.files("spamlang.suites") / f"{name_or_file}.toml"
    if not candidate.is_file():
        raise SpamLangError(f"unknown suite '{name_or_file}' (built-in: {', '.join(builtin_names())}; "
                            f"or give a .toml file)")
    return Path(str(candidate))


def _expand(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Cartesian product over list values (one level deep inside task_params/head_params)."""
    axes: list[tuple[tuple[str, ...], list]] = []
    for key, value in grid.items():
        if key in NESTED and isinstance(value, dict):
            axes += [((key, k), v if isinstance(v, list) else [v]) for k, v in value.items()]
        else:
            axes.append(((key,), value if isinstance(value, list) else [value]))
    runs = []
    for combo in itertools.product(*(values for _, values in axes)):
        run: dict[str, Any] = {k: {} for k in NESTED}
        for (path, _), value in zip(axes, combo):
            if len(path) == 2:
                run[path[0]][path[1]] = value
            else:
                run[path[0]] = value
        runs.append(run)
    return runs


def _matches(raw: dict[str, Any], rule: dict[str, Any]) -> bool:
    for key, want in rule.items():
        if key in NESTED and isinstance(want, dict):
            if any(raw.get(key, {}).get(k) != v for k, v in want.items()):
                return False
        elif raw.get(key) != want:
            return False
    return True


def _check_excludes(excludes: list[dict], grid: dict[str, Any], where: str) -> None:
    """Raise SpamLangError for an exclude key that no run can have: not a run setting, or (inside task_params or
    head_params) not a parameter the grid sets."""
    for j, rule in enumerate(excludes):
        for key, want in rule.items():
            if key not in CONFIG_KEYS:
                raise SpamLangError(f"{where}[{j}]: unknown key '{key}' "
                                    f"(run settings: {', '.join(sorted(CONFIG_KEYS))})")
            if key not in NESTED:
                continue
            if not isinstance(want, dict):
                raise SpamLangError(f"{where}[{j}].{key} must be a table, got {want!r}")
            given = grid.get(key) if isinstance(grid.get(key), dict) else {}
            unknown = sorted(set(want) - set(given))
            if unknown:
                raise SpamLangError(f"{where}[{j}]: '{key}.{unknown[0]}' is not set by the grid, so it matches no run "
                                    f"(set there: {', '.join(sorted(given)) or 'none'})")


def _config(raw: dict[str, Any], where: str) -> ResolvedConfig:
    """One run of a grid through the one validation path of settings a person wrote
    (:meth:`~spamlang.config.RunConfig.from_user`), its problems as SpamLangError naming the grid and the run."""
    try:
        return RunConfig.from_user(raw)
    except SpamLangError as exc:
        shown = {k: v for k, v in raw.items() if v or k not in NESTED}
        raise SpamLangError(f"{where} run {shown}: {exc}") from None
    except TypeError as exc:
        raise SpamLangError(f"{where}: {exc}") from None


def _axis_lengths(grid: dict[str, Any]) -> list[int]:
    """The length of each axis :func:`_expand` multiplies (one level deep inside task_params/head_params)."""
    lengths = []
    for key, value in grid.items():
        if key in NESTED and isinstance(value, dict):
            lengths += [len(v) if isinstance(v, list) else 1 for v in value.values()]
        else:
            lengths.append(len(value) if isinstance(value, list) else 1)
    return lengths


def check_size(grids: list[dict], defaults: dict[str, Any], where: str) -> int:
    """The number of runs the grids expand to before exclusions, counted without building one; SpamLangError with
    the count and its estimated cost (from the first run of each grid) above :data:`MAX_RUNS`."""
    counts = [math.prod(_axis_lengths({**defaults, **{k: v for k, v in g.items() if k != "exclude"}})) for g in grids]
    total = sum(counts)
    if total <= MAX_RUNS:
        return total
    from spamlang.sweeps.plan import NOMINAL_FLOPS, duration, run_flops  # the one cost model (plan imports suites)
    flops = 0.0
    for i, (grid, count) in enumerate(zip(grids, counts)):
        if count:
            first = next(iter(_expand({**defaults, **{k: v for k, v in grid.items() if k != "exclude"}})))
            config = _config(first, f"{where}: grid[{i}]")
            flops += count * run_flops(config)
    raise SpamLangError(f"{where}: the grids expand to {total:,} runs (about {flops:.2e} training FLOPs, "
                        f"~{duration(flops / NOMINAL_FLOPS)} one at a time at the nominal CPU rate), above the "
                        f"allowed {MAX_RUNS:,} runs per suite; split it into smaller suites")


def load(name_or_file: str) -> Suite:
    """Read, expand and check a suite; any problem raises SpamLangError naming the file, the key and the reason."""
    path = locate(name_or_file)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpamLangError(f"{where}: not a valid TOML file ({exc})") from None
    unknown = sorted(set(data) - {"suite", "defaults", "grid"})
    if unknown:
        raise SpamLangError(f"{where}: unknown section '{unknown[0]}' (sections: suite, defaults, grid)")
    meta, defaults, grids = data.get("suite", {}), data.get("defaults", {}), data.get("grid", [])
    if not isinstance(meta, dict) or not isinstance(defaults, dict):
        raise SpamLangError(f"{where}: [suite] and [defaults] must be tables")
    if not isinstance(grids, list) or not all(isinstance(g, dict) for g in grids):
        raise SpamLangError(f"{where}: grid must be an array of tables ([[grid]])")
    for key, kind in (("name", str), ("description", str), ("version", int), ("sweep", list)):
        if key in meta and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise SpamLangError(f"{where}: suite.{key} must be {'an' if kind is int else 'a'} {kind.__name__}, "
                                f"got {meta[key]!r}")
    if meta.get("version", 1) < 1:
        raise SpamLangError(f"{where}: suite.version must be >= 1, got {meta['version']}")
    if "name" in meta and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", meta["name"]):
        raise SpamLangError(f"{where}: suite.name {meta['name']!r} must be letters, digits, '_', '.' or '-' (it names "
                            f"the output folder out/<name>)")
    if not all(isinstance(k, str) for k in meta.get("sweep", [])):
        raise SpamLangError(f"{where}: suite.sweep must be a list of setting names, got {meta['sweep']!r}")
    bad = sorted(set(meta) - SUITE_KEYS)
    if bad:
        raise SpamLangError(f"{where}: unknown key 'suite.{bad[0]}' (allowed: {', '.join(sorted(SUITE_KEYS))})")
    extend = meta.get("extend_budget")
    if extend is not None:
        check_extend_budget(extend, f"{where}: suite.extend_budget")
    if not grids:
        raise SpamLangError(f"{where}: a suite needs at least one [[grid]] table")
    for section, table in [("defaults", defaults)] + [(f"grid[{i}]", g) for i, g in enumerate(grids)]:
        bad = sorted(set(table) - CONFIG_KEYS - ({"exclude"} if section != "defaults" else set()))
        if bad:
            raise SpamLangError(f"{where}: unknown key '{section}.{bad[0]}' (run settings: "
                                f"{', '.join(sorted(CONFIG_KEYS))})")
    sweep = tuple(meta.get("sweep", ["lr"]))
    if not set(sweep) <= CONFIG_KEYS:
        raise SpamLangError(f"{where}: suite.sweep names unknown settings {sorted(set(sweep) - CONFIG_KEYS)}")
    for key in sweep:
        if key not in SWEEPABLE:
            why = "seeds are replicates, never chosen between" if key in ("seed", "eval_seed") else \
                "it defines what is compared (or how it is measured or executed), so it is never chosen on val"
            raise SpamLangError(f"{where}: suite.sweep cannot name '{key}': {why} (sweepable: "
                                f"{', '.join(SWEEPABLE)})")
    check_size(grids, defaults, where)
    runs, seen = [], set()
    for i, grid in enumerate(grids):
        grid = dict(grid)
        excludes = grid.pop("exclude", [])
        if not isinstance(excludes, list) or not all(isinstance(e, dict) for e in excludes):
            raise SpamLangError(f"{where}: grid[{i}].exclude must be a list of tables")
        _check_excludes(excludes, {**defaults, **grid}, f"{where}: grid[{i}].exclude")
        for raw in _expand({**defaults, **grid}):
            if any(_matches(raw, rule) for rule in excludes):
                continue
            config = _config(raw, f"{where}: grid[{i}]")
            if config.run_id not in seen:
                seen.add(config.run_id)
                runs.append(config)
    for key in sweep:
        values = {json.dumps(getattr(c, key), sort_keys=True) for c in runs}
        if key != "lr" and len(values) < 2:  # lr rounds grow a single lr; any other swept setting needs values
            raise SpamLangError(f"{where}: suite.sweep names '{key}' but every run has "
                                f"{key}={getattr(runs[0], key)!r}: nothing to choose between (give it a list of "
                                f"values, or drop it from sweep)")
    if not runs:
        raise SpamLangError(f"{where}: the grids expand to no runs (an empty list, or everything excluded)")
    return Suite(name=meta.get("name", path.stem), description=meta.get("description", ""),
                 version=meta.get("version", 1), sweep=sweep, runs=tuple(runs), source=where, extend_budget=extend)


def check_extend_budget(value: Any, where: str) -> None:
    """Raise SpamLangError unless ``value`` is a budget factor: a finite number above 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 1 < value < math.inf:
        raise SpamLangError(f"{where} must be a number above 1 (the factor on the budget of a configuration not "
                            f"learned), got {value!r}")
