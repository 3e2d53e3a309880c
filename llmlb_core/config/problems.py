"""Settings problems in words an operator can act on: which key, which environment variable,
what was expected and what was given, and the near miss for a misspelt name.

Used where settings are loaded (``llmlb serve``, ``llmlb node``: the first problem stops start-up
in one line) and by ``llmlb config check`` (every problem, one line each).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from typing import Any

import msgspec
import msgspec.inspect

_AT_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_KEY_RE = re.compile(r"^\.(?P<key>\w+)")
_UNKNOWN_RE = re.compile(r"unknown field `(?P<key>\w+)`")
_MISSING_RE = re.compile(r"missing required field `(?P<key>\w+)`")
_EXPECTED_RE = re.compile(r"^Expected `(?P<expected>[^`]+)`")
_GOT_RE = re.compile(r", got `\w+`$")

# msgspec's type names, as an operator writes the value (TOML or an environment variable).
_EXPECTED = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "array": "a list (TOML [...]; in the environment a,b or a JSON array [...])",
    "object": "a table",
    "null": "nothing",
}


def key_of(exc: msgspec.ValidationError) -> str | None:
    """The top-level key a validation error is about (``port`` for ``$.port``, ``capabilities``
    for ``$.capabilities[0]``, the unknown key for an unknown field)."""
    text = str(exc)
    unknown = _UNKNOWN_RE.search(text)
    if unknown:
        return unknown.group("key")
    at = _AT_RE.search(text)
    key = _KEY_RE.match(at.group("path")) if at else None
    return key.group("key") if key else None


def _wanted(expected: str) -> str:
    """``int | null`` as ``an integer or nothing``."""
    return " or ".join(_EXPECTED.get(kind.strip(), kind.strip()) for kind in expected.split("|"))


def _choices(struct: type[Any], key: str) -> list[Any] | None:
    """The values a ``Literal`` field allows (None: not such a field)."""
    try:
        info = msgspec.inspect.type_info(struct)
    except (TypeError, ValueError):
        return None
    for field in getattr(info, "fields", ()):
        if field.name == key or field.encode_name == key:
            kinds = field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
            for kind in kinds:
                if isinstance(kind, msgspec.inspect.LiteralType):
                    return list(kind.values)
    return None


def _field_names(struct: type[Any]) -> list[str]:
    return [f.encode_name for f in msgspec.structs.fields(struct)]


def closest(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate ``name`` is most likely a misspelling of, if any."""
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.75)
    return match[0] if match else None


def near_miss(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest candidate, or nothing."""
    match = closest(name, candidates)
    return f" (did you mean {match}?)" if match else ""


def describe_invalid(
    exc: msgspec.ValidationError,
    table: Mapping[str, Any],
    struct: type[Any],
    *,
    where: str = "",
    noun: str = "setting",
    env_prefix: str,
) -> str:
    """One line for a table that did not convert to ``struct``: ``invalid setting [plugin.images]
    size_fallback (env LLMLB_PLUGIN__IMAGES__SIZE_FALLBACK): expected true or false, got 'yes'``.
    ``where`` names the table (empty: the top level), ``env_prefix`` the variable's prefix up to
    the key."""
    text = str(exc)
    key = key_of(exc)
    place = f"{where} " if where else ""
    missing = _MISSING_RE.search(text)
    if missing:
        name = missing.group("key")
        return f"missing {noun} {place}{name} (env {env_prefix}{name.upper()})"
    if key is None:
        return f"invalid {noun}s {where}: {text}".replace(" :", ":")
    if _UNKNOWN_RE.search(text):
        match = closest(key, _field_names(struct))
        hint = f"; did you mean {match}?" if match else ""
        return f"unknown {noun} {place}{key} (env {env_prefix}{key.upper()}{hint})"
    given = table.get(key)
    choices = _choices(struct, key)
    if choices is not None:
        reason = f"expected one of {', '.join(repr(c) for c in choices)}"
    else:
        reason = _GOT_RE.sub("", _AT_RE.sub("", text))
        reason = _EXPECTED_RE.sub(lambda m: f"expected {_wanted(m.group('expected'))}", reason)
    reason = f"{reason.replace('`', '')}, got {given!r}"
    return f"invalid {noun} {place}{key} (env {env_prefix}{key.upper()}): {reason}"


def table_problems(
    table: Mapping[str, Any],
    struct: type[Any],
    *,
    where: str = "",
    noun: str = "setting",
    env_prefix: str,
    skip: Iterable[str] = (),
) -> list[str]:
    """Every problem of ``table`` as ``struct``, one line per key (``skip``: keys checked
    elsewhere, e.g. sub-tables). A problem that no single key has (a required field missing)
    is reported once at the end."""
    skipped = set(skip)
    problems: list[str] = []
    for key, value in table.items():
        if key in skipped:
            continue
        try:
            msgspec.convert({key: value}, struct, strict=False)
        except msgspec.ValidationError as exc:
            if key_of(exc) == key:
                problems.append(
                    describe_invalid(exc, table, struct, where=where, noun=noun, env_prefix=env_prefix)
                )
    if not problems:
        try:
            msgspec.convert(dict(table), struct, strict=False)
        except msgspec.ValidationError as exc:
            problems.append(
                describe_invalid(exc, table, struct, where=where, noun=noun, env_prefix=env_prefix)
            )
    return problems


def unknown_variables(
    environ: Mapping[str, str],
    *,
    prefix: str,
    known: Iterable[str],
    patterns: Iterable[re.Pattern[str]] = (),
    ignore_prefixes: Iterable[str] = (),
) -> list[str]:
    """One line per environment variable that starts with ``prefix`` and that nothing reads:
    not in ``known``, matching none of ``patterns`` and under none of ``ignore_prefixes``
    (another process's variables, e.g. ``LLMLB_NODE_`` for the router)."""
    known_names = {name.upper() for name in known}
    pattern_list = list(patterns)
    ignored = tuple(ignore_prefixes)
    lines = []
    for name in sorted(environ):
        if (
            not name.startswith(prefix)
            or name.upper() in known_names
            or (ignored and name.startswith(ignored))
            or any(p.fullmatch(name) for p in pattern_list)
        ):
            continue
        lines.append(f"unknown environment variable {name} ignored{near_miss(name, known_names)}")
    return lines
