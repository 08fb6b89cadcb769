"""What a leaderboard writes and owns: the provenance of its numbers, the sidecar with the tables' hashes, and the
refusal to replace a file the tool did not write."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from spamlang import __version__
from spamlang.errors import SpamLangError
from spamlang.publishing import models as models
from spamlang.record.provenance import git_commit

FORMATS = ("md", "csv", "html")


#: the table files of each format
TABLE_FILES = {"md": ("leaderboard.md",),
               "csv": ("leaderboard.csv", "configurations.csv", "speedup.csv", "models.csv", "fit.csv", "control.csv"),
               "html": ("leaderboard.html",)}


def provenance(runs: pd.DataFrame, command: str) -> dict:
    """Where the numbers come from: the command, folders, suites, task versions, commits, devices, library versions
    and the date range of the runs (as recorded by :func:`load_folders`), and the scorer's own version."""
    def env(key: str) -> list[str]:
        return sorted({str(e[key]) for e in runs["env"] if e.get(key) is not None})

    dates = sorted(c for c in runs["created"] if c)
    tasks = {(t, v) for t, v in zip(runs["task"], runs["task_version"]) if v is not None}
    return {"command": command, "runs": len(runs), "folders": list(runs.attrs.get("folders", [])),
            "suites": sorted({f"{s['name']} v{s['version']}" for s in runs["suite"] if s}),
            "tasks": [f"{t} v{v}" for t, v in sorted(tasks)], "commits": env("git_commit"), "devices": env("device"),
            "torch": env("torch"), "python": env("python"), "spamlang": env("spamlang"),
            "dates": [dates[0], dates[-1]] if dates else [],
            "scorer": f"spamlang {__version__} ({git_commit() or 'not in git'})"}


#: the JSON file beside the CSV tables that holds their provenance (the CSV files are plain tables for ``read_csv``)
PROVENANCE_FILE = "leaderboard.provenance.json"


PROVENANCE_SCHEMA = "spamlang.leaderboard-provenance/1"
#: the provenance of the tables ``spamlang fit`` writes (fit.csv, control.csv), of the same schema
FIT_PROVENANCE_FILE = "fit.provenance.json"


def _sha256(data: bytes) -> str:
    import hashlib
    return hashlib.sha256(data).hexdigest()


def provenance_sidecar(prov: Mapping, tables: Mapping[str, str], out: Path) -> str:
    """The text of :data:`PROVENANCE_FILE`: ``schema``, the provenance of the runs (see :func:`provenance`) and, in
    ``tables``, the sha256 of each CSV table about to be written to ``out``, with that of the file of the same name
    it replaces (so that a file is still known as the tool's own if the writing stops between the two), and that of
    an earlier table left in ``out`` and not rewritten."""
    hashes = {}
    for name in dict.fromkeys([*tables, *TABLE_FILES["csv"]]):  # a table of an earlier run, not rewritten, stays known
        current = out / name
        before = [_sha256(current.read_bytes())] if current.is_file() and _is_ours(current) else []
        new = [_sha256(tables[name].encode())] if name in tables else []
        if new or before:
            hashes[name] = list(dict.fromkeys([*new, *before]))
    return json.dumps({"schema": PROVENANCE_SCHEMA, **prov, "tables": hashes}, indent=1) + "\n"


def _recorded_hashes(out: Path) -> dict[str, list[str]]:
    """The CSV hashes that ``out``'s provenance files list (none when they are missing or not the tool's)."""
    hashes: dict[str, list[str]] = {}
    for path in (out / PROVENANCE_FILE, out / FIT_PROVENANCE_FILE):
        try:
            data = json.loads(path.read_text()) if path.is_file() and _is_ours(path) else {}
        except (OSError, ValueError):
            continue
        for name, values in (data.get("tables", {}) if isinstance(data.get("tables"), dict) else {}).items():
            hashes.setdefault(name, []).extend(values if isinstance(values, list) else [])
    return hashes


#: how each file the leaderboard writes begins (by name, else by suffix), so that a file of that name the tool did
#: not write is never replaced; models.csv is the table of :mod:`spamlang.publishing.models`, headed by its columns. The
#: other CSV tables are known by their sha256 in :data:`PROVENANCE_FILE` (or, written by older versions, by their
#: ``# command: `` first line).
_SIGNATURES = {"models.csv": b"model,step,", ".md": b"# SpamLang leaderboard", ".csv": b"# command: ",
               PROVENANCE_FILE: b'{\n "schema": "' + PROVENANCE_SCHEMA.encode() + b'"',
               FIT_PROVENANCE_FILE: b'{\n "schema": "' + PROVENANCE_SCHEMA.encode() + b'"',
               ".html": b"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>SpamLang leaderboard</title>",
               ".png": b"\x89PNG\r\n\x1a\n", "fit.md": b"# SpamLang scaling fits",
               ".svg": b'<?xml version="1.0" encoding="utf-8" standalone="no"?>\n<!DOCTYPE svg'}


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is a leaderboard file written by this tool (a PNG or SVG: one rendered by matplotlib; a CSV
    table: one whose sha256 the provenance file lists)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    signature = _SIGNATURES.get(path.name, _SIGNATURES.get(path.suffix))
    if signature is not None and head.startswith(signature):
        return path.suffix not in (".png", ".svg") or b"Matplotlib" in head
    if path.suffix == ".csv" and path.name != "models.csv":
        return _sha256(path.read_bytes()) in _recorded_hashes(path.parent).get(path.name, [])
    return False


def check_outputs(out: Path, names: Iterable[str]) -> None:
    """Refuse (SpamLangError) to replace a file in ``out`` that the leaderboard did not write."""
    if out.exists() and not out.is_dir():
        raise SpamLangError(f"output {out} is a file, not a folder; give a folder path")
    foreign = [out / n for n in names if (out / n).exists() and not ((out / n).is_file() and _is_ours(out / n))]
    if foreign:
        raise SpamLangError(f"{foreign[0]} exists and was not written by 'spamlang leaderboard'; it is left as it is "
                            f"(move it away or choose another --out)")
