"""The JSON Schema of a run record, derived from the record types and the run settings' declarations.

``python -m spamlang.record.schema`` regenerates the published file (``run-2.json`` beside this module); every record
read is validated against that file.
"""
from __future__ import annotations

import collections.abc
import dataclasses
import functools
import json
import sys
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

#: the schema file of the current record schema, beside this module
SCHEMA_FILE = "run-2.json"


def hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a record type."""
    return typing.get_type_hints(cls, vars(sys.modules[cls.__module__]))


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean"}


def _type_schema(tp: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = _type_schema(next(a for a in args if a is not type(None)))
        if set(inner) == {"type"}:
            return {"type": [inner["type"], "null"]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin is tuple:
        return {"type": "array", "items": _type_schema(args[0])}
    if dataclasses.is_dataclass(tp):
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if origin in (collections.abc.Mapping, dict):
        return {"type": "object"}
    return {"type": _JSON_TYPES[tp]}


def _object_schema(cls: type) -> dict[str, Any]:
    types_, properties, required = hints(cls), {}, []
    for f in dataclasses.fields(cls):
        prop = _type_schema(types_[f.name])
        m = f.metadata
        if m.get("low") is not None:
            prop["exclusiveMinimum" if m.get("low_open") else "minimum"] = m["low"]
        if m.get("high") is not None:
            prop["exclusiveMaximum" if m.get("high_open") else "maximum"] = m["high"]
        if m.get("choices"):
            prop["enum"] = list(m["choices"])
        properties[f.name] = {"description": m.get("help", ""), **prop}
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            required.append(f.name)
    return {"type": "object", "description": (cls.__doc__ or "").strip().split("\n")[0], "properties": properties,
            "required": required, "additionalProperties": False}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a record of SCHEMA, derived from the record types (and the run settings' declarations)."""
    from spamlang.config import RunConfig
    from spamlang.record import SCHEMA, STATUSES, STOPS, Env, EvalPoint, Final, RunRecord, SuiteInfo, Timing
    top = _object_schema(RunRecord)
    top["properties"] = {"schema": {"const": SCHEMA}, **top["properties"]}
    top["properties"]["status"]["enum"] = list(STATUSES)
    top["required"] = ["schema", *top["required"]]
    top["if"] = {"properties": {"status": {"enum": ["ok", "diverged"]}}}
    top["then"] = {"properties": {"history": {"minItems": 1}, "final": {"type": "object"}}}
    defs = {cls.__name__: _object_schema(cls) for cls in (RunConfig, EvalPoint, Final, Timing, Env, SuiteInfo)}
    defs["Final"]["properties"]["stopped"]["enum"] = [*STOPS, None]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": f"SpamLang run record ({SCHEMA})",
            **top, "$defs": defs}


@functools.lru_cache(maxsize=1)
def validator() -> jsonschema.protocols.Validator:
    schema = json.loads(resources.files("spamlang.record").joinpath(SCHEMA_FILE).read_text())
    return jsonschema.Draft202012Validator(schema)


if __name__ == "__main__":  # regenerate the published schema file from the types
    from spamlang.system import atomic
    atomic.write_text(Path(__file__).parent / SCHEMA_FILE,
                      json.dumps(json_schema(), indent=1, ensure_ascii=False) + "\n")
