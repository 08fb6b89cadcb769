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


@functools.lru_cache(maxsize=None)
def hints(cls: type) -> dict[str, Any]:
    """The resolved type hints of a record type (computed once per type)."""
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


class _Error:
    """An error of the evaluation-point check, shaped as jsonschema's (``json_path``, ``message``)."""

    def __init__(self, json_path: str, message: str):
        self.json_path, self.message = json_path, message


def _is(kind: str, value: Any) -> bool:
    """JSON Schema's type test (an integral float is an integer, a bool is no number)."""
    if kind == "null":
        return value is None
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer":
        return isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if kind == "number":
        return isinstance(value, (int, float))
    return {"string": str, "boolean": bool, "object": dict, "array": list}[kind] is type(value)


class Validator:
    """The record schema's validator: ``jsonschema`` for the record, and for the items of ``history`` (tens of
    thousands in a folder of records, most of the time jsonschema would take) the same schema checked by a
    compiled loop: an object with its required properties, no others, each of its declared type(s). A schema whose
    evaluation point uses any other keyword is left to jsonschema whole."""

    def __init__(self, schema: dict):
        point = schema["$defs"]["EvalPoint"]
        simple = set(point) <= {"type", "description", "properties", "required", "additionalProperties"} and \
            point.get("additionalProperties") is False and \
            all(set(p) <= {"type", "description"} for p in point["properties"].values())
        self.point = None
        if simple and schema["properties"]["history"].get("items") == {"$ref": "#/$defs/EvalPoint"}:
            history = {k: v for k, v in schema["properties"]["history"].items() if k != "items"}
            schema = {**schema, "properties": {**schema["properties"], "history": history}}
            self.point = {name: p["type"] if isinstance(p["type"], list) else [p["type"]]
                          for name, p in point["properties"].items()}
            plain = {"number": (int, float), "integer": (int,), "null": (type(None),), "string": (str,)}
            self.fast = {name: frozenset(t for kind in kinds for t in plain.get(kind, ()))
                         for name, kinds in self.point.items()}
            self.required = point.get("required", [])
        self.jsonschema = jsonschema.Draft202012Validator(schema)

    def iter_errors(self, data: Any):
        errors = list(self.jsonschema.iter_errors(data))
        yield from errors
        if errors or self.point is None or not isinstance(data, dict) or not isinstance(data.get("history"), list):
            return
        for i, item in enumerate(data["history"]):
            where = f"$.history[{i}]"
            if not isinstance(item, dict):
                yield _Error(where, f"{item!r} is not of type 'object'")
                return
            missing = [name for name in self.required if name not in item]
            if missing:
                yield _Error(where, f"{missing[0]!r} is a required property")
                return
            extra = [name for name in item if name not in self.point]
            if extra:
                yield _Error(where, f"Additional properties are not allowed ({extra[0]!r} was unexpected)")
                return
            for name, value in item.items():
                if type(value) in self.fast[name]:  # the common case, decided by the exact type alone
                    continue
                kinds = self.point[name]
                if not any(_is(kind, value) for kind in kinds):
                    yield _Error(f"{where}.{name}", f"{value!r} is not of type {', '.join(map(repr, kinds))}")
                    return


def best_error(validator: "Validator", data: Any):
    """The error to report of ``data`` (jsonschema's best match first), or None when it is valid."""
    errors = list(validator.iter_errors(data))
    native = [e for e in errors if not isinstance(e, _Error)]
    if native:
        return jsonschema.exceptions.best_match(native)
    return errors[0] if errors else None


@functools.lru_cache(maxsize=1)
def validator() -> Validator:
    schema = json.loads(resources.files("spamlang.record").joinpath(SCHEMA_FILE).read_text())
    return Validator(schema)


if __name__ == "__main__":  # regenerate the published schema file from the types
    from spamlang.system import atomic
    atomic.write_text(Path(__file__).parent / SCHEMA_FILE,
                      json.dumps(json_schema(), indent=1, ensure_ascii=False) + "\n")
