"""Dataclass fields changed from the command line: ``field=value,...`` with JSON values typed like the field.

Shared by every tool flag that edits a config as data (evaluation rows, ``--adapt``, synthetic domain specs),
so one syntax and one set of error messages covers them all.
"""

from __future__ import annotations

import dataclasses
import json


def _parse_value(text: str, current: object, where: str, optional: bool = False) -> object:
    """A command-line value for a dataclass field, typed like the field's current value; ``null`` unsets an
    ``optional`` field (one whose default is None)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = text
    if value is None and optional:
        return None
    if current is None:  # an optional field left unset (e.g. a time budget): a number, true/false, or null again
        if isinstance(value, (list, dict)):
            raise ValueError(f"{where}: expected a number, true/false or null, got {text!r}")
        return value
    if isinstance(current, tuple):
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a JSON list like [1.0, 2.0] for a tuple field, got {text!r}")
        return tuple(value)
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {text!r}")
        return value
    if isinstance(current, (int, float)) and not isinstance(current, bool):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {text!r}")
        if isinstance(current, float):
            return float(value)
        if not float(value).is_integer():
            raise ValueError(f"{where}: expected an integer, got {text!r}")
        return int(value)
    if isinstance(current, str):
        return str(value)
    raise ValueError(f"{where}: field of type {type(current).__name__} cannot be set from the command line")


def replace_fields(obj: object, changes: dict[str, str], where: str) -> object:
    """One dataclasses.replace with every change (typed like the current values), so validation sees them together."""
    fields = {f.name: f for f in dataclasses.fields(obj)}
    typed = {}
    for key, text in changes.items():
        if key not in fields:
            raise ValueError(f"{where}: unknown field {key!r} of {type(obj).__name__}; known: {sorted(fields)}")
        typed[key] = _parse_value(text, getattr(obj, key), f"{where}, field {key!r}",
                                  optional=fields[key].default is None)
    try:
        return dataclasses.replace(obj, **typed)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def pairs(text: str, where: str) -> list[tuple[str, str]]:
    """``a=1,b=[1,2]`` -> [("a", "1"), ("b", "[1,2]")]; ValueError naming ``where`` on an item without '='."""
    out = []
    for item in _split_overrides(text):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{where}: expected field=value, got {item!r}")
        out.append((key.strip(), value.strip()))
    return out


def apply_overrides(obj: object, text: str, where: str) -> object:
    """A copy of dataclass ``obj`` with ``field=value,...`` (JSON values) applied; ValueError names ``where``."""
    return replace_fields(obj, dict(pairs(text, where)), where)


def _split_overrides(text: str) -> list[str]:
    """Split ``a=1,b=[1,2],c=x`` on the commas outside brackets."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item for item in items if item.strip()]
