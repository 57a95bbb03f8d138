"""Lenient decoding of KIS replies: a null, numeric or boolean value where KIS documents a string
must not turn a reply (an order KIS placed!) into a decoding failure.

The strict typed decode runs first (the normal, fast case). Only when it fails is the body parsed
as plain JSON and normalised: a null field is dropped (the Struct's default applies, "" for a
string), a number or boolean becomes its string. Every such repair is returned as a note, so the
caller can log it and decide whether the repaired reply still proves what it needs to (an order
reply whose ODNO needed repair is a doubt: see kis.adapter).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

T = TypeVar("T")


def _normalise(value: Any, path: str, notes: list[str]) -> Any:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            p = f"{path}.{k}"
            if v is None:
                notes.append(f"null at {p}")
                continue
            out[k] = _normalise(v, p, notes)
        return out
    if isinstance(value, list):
        items = []
        for i, v in enumerate(value):
            if v is None:
                notes.append(f"null at {path}[{i}]")
                continue
            items.append(_normalise(v, f"{path}[{i}]", notes))
        return items
    if isinstance(value, bool):
        notes.append(f"boolean at {path}")
        return "Y" if value else "N"
    if isinstance(value, (int, float)):
        notes.append(f"number at {path}")
        return str(value)
    return value


def decode(content: bytes, type_: type[T]) -> tuple[T | None, list[str]]:
    """(reply, notes). None when the body is not a JSON object or cannot be repaired."""
    try:
        return msgspec.json.decode(content, type=type_), []
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError:
        return None, ["not JSON"]
    try:
        raw = msgspec.json.decode(content)
    except msgspec.DecodeError:
        return None, ["not JSON"]
    if not isinstance(raw, dict):
        return None, ["not a JSON object"]
    notes: list[str] = []
    fixed = _normalise(raw, "$", notes)
    try:
        return msgspec.convert(fixed, type_), notes
    except msgspec.ValidationError as e:
        return None, [*notes, f"unusable: {e}"]
