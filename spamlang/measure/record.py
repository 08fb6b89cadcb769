"""The measurement record (schema ``spamlang.measure/1``): one JSON file per measured checkpoint.

Fields: ``schema``, ``measure_id`` (a hash of the checkpoint's path, config hash and parameter count, the text files'
sha256 and the settings), ``created``, ``model`` (path, name, architecture, model_type, config_hash, parameters,
vocab_size V, hidden_size D, head_rank, tied, bias, step), ``tokenizer`` (folder and class; null for pre-tokenized
text), ``text`` (files with format, bytes and sha256; tokens read, windows, seq_len, tokens measured), ``settings``
(seed, dtype, device, spectrum method, sketch size, step norm, chunk), ``per_token``, ``spectrum``, ``update`` (see
:mod:`spamlang.measure.pertoken`, :mod:`.spectrum`, :mod:`.update`), ``timing`` (seconds, tokens per second) and
``env`` (device, torch's intra-op threads, library versions, git commit).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from spamlang.errors import SpamLangError
from spamlang.record import strict_json
from spamlang.system import atomic

SCHEMA = "spamlang.measure/1"
REQUIRED = ("schema", "measure_id", "created", "model", "tokenizer", "text", "settings", "per_token", "spectrum",
            "update", "timing", "env")


def measure_id(model: dict, text: dict, settings: dict) -> str:
    """A stable id: the same checkpoint, text and settings give the same id (and so the same file name)."""
    key = {"config": model["config_hash"], "parameters": model["parameters"], "path": model["path"],
           "files": [f["sha256"] for f in text["files"]], "tokens": text["tokens"], "seq_len": text["seq_len"],
           "settings": settings}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def write(record: dict, folder: str | Path) -> Path:
    """Store ``record`` as ``folder/<measure_id>.json``, atomically."""
    path = Path(folder) / f"{record['measure_id']}.json"
    atomic.write_text(path, strict_json(record) + "\n")
    return path


def check(record: Any, source: str) -> dict:
    """Return ``record`` if it is a measurement record of this schema, else raise SpamLangError naming ``source``."""
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise SpamLangError(f"{source}: not a measurement record of schema {SCHEMA!r}")
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise SpamLangError(f"{source}: measurement record lacks {', '.join(missing)}")
    return record


def read(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpamLangError(f"{path}: not readable as JSON ({exc})") from None
    return check(data, str(path))


def is_measurement(path: str | Path) -> bool:
    """Whether ``path`` is a JSON file that declares this schema (without checking the rest). A file that opens with
    its ``schema`` key naming another schema, as every run record does, is told by its first bytes (a folder of run
    records is not parsed twice); any other is parsed."""
    import re
    try:
        with open(path, "rb") as f:
            head = f.read(256)
        found = re.match(rb'\s*\{\s*"schema"\s*:\s*"([^"\\]*)"', head)
        if found and found.group(1).decode() != SCHEMA:
            return False  # another schema (a run record): no need to parse it
        return json.loads(Path(path).read_text()).get("schema") == SCHEMA
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False
