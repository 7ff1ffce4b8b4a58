"""Declarative checks for settings and stored values: kind, range, choices, null; one-line errors."""

from __future__ import annotations

import math
import reprlib
from dataclasses import dataclass
from typing import Any

from captioner.core.errors import CaptionerError

QUOTE_CHARS = 60  # the most characters of a value an error message quotes

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist = 2, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = QUOTE_CHARS

KIND_NAMES = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
              "paths": "a path or a list of paths", "list": "a list"}


@dataclass(frozen=True)
class Field:
    """What one value may be: its kind, inclusive bounds (`below`: exclusive upper bound), choices, null.

    For a string, `choices` are the only values allowed; for a number they are extra words allowed
    besides it (`train.devices: auto | N` is `Field("int", "auto", low=1, choices=("auto",))`).
    """

    kind: str
    default: Any = None
    low: float | None = None
    high: float | None = None
    below: float | None = None
    choices: tuple[Any, ...] = ()
    nullable: bool = False

    def describe(self) -> str:
        """The allowed values in words, for error messages."""
        if self.choices and self.kind == "str":
            return "one of " + ", ".join(str(c) for c in self.choices)
        if self.kind == "ints":
            return f"a list of 1 to {self.below - 1} distinct integers from {self.low} to {self.high}"
        words = KIND_NAMES[self.kind]
        if self.low is not None:
            words += f" >= {self.low}"
        if self.high is not None:
            words += f" <= {self.high}"
        if self.below is not None:
            words += f" < {self.below}"
        extra = [str(c) for c in self.choices] + (["null"] if self.nullable else [])
        return words + "".join(f" or {word}" for word in extra)


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """`value`'s repr cut for a one-line message: a string to its first `limit` characters, anything else to a few
    items two levels deep, so no message formats a huge value (or an expanded YAML alias bomb) in full."""
    if isinstance(value, str):
        return repr(value[:limit]) + ("..." if len(value) > limit else "")
    text_ = _REPR.repr(value)
    return text_ if len(text_) <= limit else text_[:limit] + "..."


def integer(default: int | None, low: int | None = None, high: int | None = None) -> Field:
    """An int setting within [low, high]."""
    return Field("int", default, low=low, high=high)


def number(default: float | None, low: float | None = None, high: float | None = None,
           below: float | None = None) -> Field:
    """A finite float setting (ints accepted) within [low, high] or [low, below)."""
    return Field("float", default, low=low, high=high, below=below)


def choice(default: str, *choices: str) -> Field:
    """A string setting that must be one of `choices`."""
    return Field("str", default, choices=choices)


def text(default: str | None, nullable: bool = False) -> Field:
    """A non-empty string setting."""
    return Field("str", default, nullable=nullable)


def paths(default: str | list[str] | None, nullable: bool = True) -> Field:
    """A path or a list of paths (non-empty strings)."""
    return Field("paths", default, nullable=nullable)


def integers(default: list[int], low: int, high: int, most: int) -> Field:
    """A non-empty list of at most `most` distinct ints, each within [low, high] (`below` holds `most` + 1)."""
    return Field("ints", default, low=low, high=high, below=most + 1)


def _kind_ok(field: Field, value: Any) -> bool:
    """Whether `value` has the field's kind (bools are not numbers; ints stand for floats)."""
    if field.kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if field.kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if field.kind == "str":
        return isinstance(value, str) and value.strip() != ""
    if field.kind == "bool":
        return isinstance(value, bool)
    if field.kind == "paths":
        items = value if isinstance(value, list) else [value]
        return bool(items) and all(isinstance(v, str) and v.strip() for v in items)
    if field.kind == "ints":
        return (isinstance(value, list) and 0 < len(value) < field.below and len(set(value)) == len(value)
                and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
    return isinstance(value, list)


def check(where: str, key: str, value: Any, field: Field) -> Any:
    """Return `value` if `field` allows it; otherwise raise a one-line CaptionerError naming `where` and `key`."""
    if value is None:
        if field.nullable:
            return value
        raise CaptionerError(f"{where}: '{key}' is empty; it must be {field.describe()}")
    if field.choices and value in field.choices:
        return value
    if not _kind_ok(field, value) or (field.choices and field.kind == "str"):
        raise CaptionerError(f"{where}: '{key}' must be {field.describe()}, got {quote(value)}")
    if field.kind == "ints":
        if min(value) < field.low or max(value) > field.high:
            raise CaptionerError(f"{where}: '{key}' must be {field.describe()}, got {quote(value)}")
        return value
    too_low = field.low is not None and value < field.low
    too_high = (field.high is not None and value > field.high) or (field.below is not None and value >= field.below)
    if too_low or too_high:
        raise CaptionerError(f"{where}: '{key}' must be {field.describe()}, got {quote(value)}")
    return value
