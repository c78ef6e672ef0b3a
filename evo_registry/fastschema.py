"""A compiled yes/no check of evo-inventory/1: the same verdict as jsonschema, ten times sooner.

jsonschema walks the schema for every report, building a validator object for each of the ~70
values it descends into: ~0.6 ms of the ~2 ms a report cost the registry (cProfile of the
request path).  Most reports are valid, and for those only the verdict matters, so the
schema is compiled once into nested closures that answer True or False; a report they refuse is
handed to jsonschema for the message that names the field (``wire.schema_errors``).

Only the keywords the wire schema uses are compiled, each with jsonschema's exact semantics
(Draft 2020-12, as implemented by the installed jsonschema: a float with an integral value is an
integer, a bool is not a number, ``pattern`` is ``re.search``, formats through jsonschema's own
format checker).  Any other keyword raises ``Unsupported`` at compile time, and the caller keeps
using jsonschema: a future schema can never be judged more leniently by accident.
tests/registry/test_fastschema.py checks the verdicts against jsonschema with hypothesis.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]

# Keywords with no effect on validity (annotations and identifiers).
_ANNOTATIONS = frozenset({"$schema", "$id", "title", "description", "$comment", "examples",
                          "default"})


class Unsupported(ValueError):
    """The schema uses a keyword this compiler does not implement."""


def _is_integer(v: Any) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "null": lambda v: v is None,
    "boolean": lambda v: isinstance(v, bool),
    "integer": _is_integer,
    "number": _is_number,
}


def _type_check(spec: Any) -> Check:
    names = [spec] if isinstance(spec, str) else list(spec)
    if not names or not all(isinstance(n, str) and n in _TYPES for n in names):
        raise Unsupported(f"type {spec!r}")
    # Fast paths for the shapes the schema uses most.
    if sorted(names) == ["null", "string"]:
        return lambda v: v is None or isinstance(v, str)
    if len(names) == 1:
        return _TYPES[names[0]]
    checks = [_TYPES[n] for n in names]
    return lambda v: any(c(v) for c in checks)


def _literal_equal(expected: Any) -> Check:
    """Return jsonschema's ``equal`` against a string, null or integer literal."""
    if isinstance(expected, str):
        return lambda v: isinstance(v, str) and v == expected
    if expected is None:
        return lambda v: v is None
    if isinstance(expected, int) and not isinstance(expected, bool):
        return lambda v: _is_number(v) and v == expected
    raise Unsupported(f"const/enum value {expected!r}")


def compile_schema(schema: Any, format_checker: Any) -> Check:
    """Return a function telling whether a JSON value is valid against ``schema``."""
    if schema is True:
        return lambda v: True
    if schema is False:
        return lambda v: False
    if not isinstance(schema, Mapping):
        raise Unsupported(f"schema {schema!r}")
    checks: list[Check] = []
    unknown = set(schema) - _ANNOTATIONS - {
        "type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maxItems",
        "items", "required", "properties", "additionalProperties", "anyOf", "allOf", "format"}
    if unknown:
        raise Unsupported(f"keywords {sorted(unknown)}")
    if "type" in schema:
        checks.append(_type_check(schema["type"]))
    if "const" in schema:
        checks.append(_literal_equal(schema["const"]))
    if "enum" in schema:
        options = [_literal_equal(e) for e in schema["enum"]]
        strings = frozenset(e for e in schema["enum"] if isinstance(e, str))
        if len(strings) == len(options):
            checks.append(lambda v: isinstance(v, str) and v in strings)
        else:
            checks.append(lambda v: any(o(v) for o in options))
    string_checks = _string_checks(schema, format_checker)
    if string_checks:
        def strings_ok(v: Any) -> bool:
            return not isinstance(v, str) or all(c(v) for c in string_checks)
        checks.append(strings_ok)
    if "minimum" in schema:
        low = schema["minimum"]
        if not _is_number(low):
            raise Unsupported(f"minimum {low!r}")
        checks.append(lambda v: not _is_number(v) or v >= low)
    array = _array_check(schema, format_checker)
    if array is not None:
        checks.append(array)
    obj = _object_check(schema, format_checker)
    if obj is not None:
        checks.append(obj)
    if "anyOf" in schema:
        alternatives = [compile_schema(s, format_checker) for s in schema["anyOf"]]
        checks.append(lambda v: any(a(v) for a in alternatives))
    if "allOf" in schema:
        checks += [compile_schema(s, format_checker) for s in schema["allOf"]]
    if not checks:
        return lambda v: True
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        first, second = checks
        return lambda v: first(v) and second(v)
    return lambda v: all(c(v) for c in checks)


def _string_checks(schema: Mapping[str, Any], format_checker: Any) -> list[Check]:
    out: list[Check] = []
    if "pattern" in schema:
        search = re.compile(schema["pattern"]).search  # jsonschema: re.search, not match
        out.append(lambda v: search(v) is not None)
    if "minLength" in schema:
        shortest = int(schema["minLength"])
        out.append(lambda v: len(v) >= shortest)
    if "maxLength" in schema:
        longest = int(schema["maxLength"])
        out.append(lambda v: len(v) <= longest)
    if "format" in schema:
        if format_checker is None:
            pass  # formats are annotations unless a checker is given (as in jsonschema)
        else:
            name = schema["format"]
            if name not in ("ipv4", "ipv6"):
                # Other formats also apply to non-strings in principle: keep it explicit.
                raise Unsupported(f"format {name!r}")
            out.append(lambda v: bool(format_checker.conforms(v, name)))
    return out


def _array_check(schema: Mapping[str, Any], format_checker: Any) -> Check | None:
    if "maxItems" not in schema and "items" not in schema:
        return None
    most = int(schema["maxItems"]) if "maxItems" in schema else None
    item = compile_schema(schema["items"], format_checker) if "items" in schema else None

    def array_ok(v: Any) -> bool:
        if not isinstance(v, list):
            return True
        if most is not None and len(v) > most:
            return False
        return item is None or all(item(x) for x in v)
    return array_ok


def _object_check(schema: Mapping[str, Any], format_checker: Any) -> Check | None:
    keys = ("required", "properties", "additionalProperties")
    if not any(k in schema for k in keys):
        return None
    required = tuple(schema.get("required", ()))
    props = {k: compile_schema(s, format_checker)
             for k, s in schema.get("properties", {}).items()}
    extra = schema.get("additionalProperties", True)
    extra_check = None if extra is True else compile_schema(extra, format_checker)

    def object_ok(v: Any) -> bool:
        if not isinstance(v, dict):
            return True
        for name in required:
            if name not in v:
                return False
        for key, value in v.items():
            check = props.get(key)
            if check is None:
                check = extra_check
                if check is None:
                    continue
            if not check(value):
                return False
        return True
    return object_ok
