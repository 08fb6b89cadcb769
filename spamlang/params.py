"""Declared, validated parameters for runs, tasks and heads (frozen dataclass fields with a help text and a range)."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

from spamlang.errors import ConfigError

_TYPES = {"int": int, "float": float, "bool": bool, "str": str}
#: the default of a parameter that must be given
REQUIRED = dataclasses.MISSING


def param(default: Any, help: str, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, choices: tuple | None = None):
    """A dataclass field for a parameter: its default (``REQUIRED``: none), a one-line meaning and the allowed range
    or choices. Annotate it ``int``, ``float``, ``bool`` or ``str``, optionally ``| None``."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "high_open": high_open, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


def mapping(help: str):
    """A dataclass field holding a mapping of further named parameters (annotated ``Mapping[str, Any]``)."""
    return dataclasses.field(default_factory=dict, metadata={"help": help, "mapping": True})


def _parts(field: dataclasses.Field) -> tuple[type, bool]:
    """(the field's scalar type, whether it may be None)."""
    text = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
    name, _, none = text.partition(" | ")
    t = _TYPES.get(name)
    if t is None or none not in ("", "None"):
        raise TypeError(f"parameter '{field.name}' must be annotated int, float, bool or str (optionally | None), "
                        f"not {field.type!r}")
    return t, none == "None"


def type_of(field: dataclasses.Field) -> type:
    """The scalar type of a parameter field (int, float, bool or str)."""
    return _parts(field)[0]


def scalar_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that hold one value (not a mapping)."""
    return [f for f in dataclasses.fields(cls) if not f.metadata.get("mapping")]


def allowed(field: dataclasses.Field) -> str:
    """Human-readable allowed values of a parameter field."""
    m = field.metadata
    if m.get("choices"):
        return "one of " + ", ".join(map(str, m["choices"]))
    if type_of(field) is str:
        return "text"
    lo = "-inf" if m.get("low") is None else m["low"]
    hi = "inf" if m.get("high") is None else m["high"]
    left = "(" if m.get("low_open") or m.get("low") is None else "["
    right = ")" if m.get("high_open") or m.get("high") is None else "]"
    return f"{left}{lo}, {hi}{right}"


def check_field(owner: str, field: dataclasses.Field, value: Any) -> None:
    """Raise ConfigError unless ``value`` has the field's type and lies in its range."""
    m = field.metadata
    if m.get("mapping"):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{owner}: parameter '{field.name}' must be a table of parameters, got {value!r}")
        return
    t, optional = _parts(field)
    if value is None and optional:
        return
    ok_type = isinstance(value, t) and not (t is not bool and isinstance(value, bool))
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        ok_type = True
    if not ok_type:
        raise ConfigError(f"{owner}: parameter '{field.name}' must be {t.__name__}, got {value!r}")
    if t in (int, float):
        bad = (isinstance(value, float) and not math.isfinite(value))
        lo, hi = m.get("low"), m.get("high")
        bad |= lo is not None and (value <= lo if m.get("low_open") else value < lo)
        bad |= hi is not None and (value >= hi if m.get("high_open") else value > hi)
        if bad:
            raise ConfigError(f"{owner}: parameter '{field.name}'={value!r} is outside the allowed range "
                              f"{allowed(field)}")
    if m.get("choices") and value not in m["choices"]:
        raise ConfigError(f"{owner}: parameter '{field.name}'={value!r} is not {allowed(field)}")


def parse_value(owner: str, field: dataclasses.Field, text: str) -> Any:
    """Convert a command-line string to the field's type, with an error naming the parameter."""
    t = type_of(field)
    try:
        if t is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        return t(text)
    except ValueError:
        raise ConfigError(f"{owner}: parameter '{field.name}' must be {t.__name__}, got {text!r}") from None


def build(cls: type, owner: str, values: Mapping[str, Any], *, from_strings: bool = False):
    """Construct the parameter dataclass ``cls`` from ``values``, refusing unknown names and bad values."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        known = ", ".join(fields) or "none"
        raise ConfigError(f"{owner}: unknown parameter '{unknown[0]}' (parameters: {known})")
    kwargs = {k: parse_value(owner, fields[k], v) if from_strings and isinstance(v, str) else v
              for k, v in values.items()}
    return cls(**kwargs)


def validate_fields(obj: Any, owner: str) -> None:
    """Check every field of the dataclass instance ``obj``."""
    for f in dataclasses.fields(obj):
        check_field(owner, f, getattr(obj, f.name))


def describe(cls: type) -> list[dict]:
    """The parameters of a dataclass as JSON-ready dicts: name, type, default, meaning, allowed values."""
    return [{"name": f.name, "type": type_of(f).__name__, "default": f.default, "help": f.metadata.get("help", ""),
             "allowed": allowed(f)} for f in scalar_fields(cls)]


def parse_assignments(items: tuple[str, ...] | list[str], flag: str = "--param") -> dict[str, str]:
    """Parse ``KEY=VALUE`` strings from the command line (``flag`` names the option in errors); a key given twice is
    an error, never a silent choice of one value."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        if key in out:
            raise ConfigError(f"{flag} {key} is given twice ({key}={out[key]} and {key}={value.strip()})")
        out[key] = value.strip()
    return out
