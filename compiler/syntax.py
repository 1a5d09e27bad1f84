"""Surface values of the .prune language and their conversion to typed IR fields.

The grammar keeps keys and values generic (``key = value``); this module owns what a
value *is* (a string, a number with its unit, a word, a list, a range, a ratio, a layer
selector) and the converters that turn one into the type a key needs, reporting a
``Diagnostic`` (never raising) when it does not fit. Invariants:
- every value carries the ``Span`` of its source text;
- converters return ``None`` after reporting, so lowering can go on and find more errors;
- a number's unit is its literal suffix: '' (plain), '%', 'x', or a count unit (K M B G T).
"""

from __future__ import annotations

import difflib
import enum
import math
import re
from dataclasses import dataclass
from typing import TypeAlias, TypeVar

from prunec.compiler.diagnostics import Diagnostic, Span
from prunec.compiler.ir import LayerSelector

E = TypeVar("E", bound=enum.Enum)


@dataclass(frozen=True)
class Str:
    text: str
    span: Span


@dataclass(frozen=True)
class Num:
    value: float
    unit: str
    raw: str
    span: Span


@dataclass(frozen=True)
class Word:
    name: str
    span: Span


@dataclass(frozen=True)
class RangeV:
    lo: Num
    hi: Num
    span: Span


@dataclass(frozen=True)
class RatioV:
    parts: tuple[Num, ...]
    span: Span


Scalar: TypeAlias = Str | Num | Word | RangeV | RatioV | LayerSelector


@dataclass(frozen=True)
class ListV:
    items: tuple[Scalar, ...]
    span: Span


Value: TypeAlias = Scalar | ListV


@dataclass(frozen=True)
class Attr:
    key: str
    value: Value
    span: Span


@dataclass(frozen=True)
class Group:
    name: str
    attrs: tuple[Attr, ...]
    span: Span


COUNT_UNITS: dict[str, int] = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
_QUANTITY = re.compile(r"([0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)(.*)")
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r", "0": "\0"}


def quantity(raw: str, span: Span) -> Num:
    """Split a QUANTITY token into its number and unit suffix.

    >>> q = quantity("1.5x", Span("s.prune", 1, 1, 1, 5))
    >>> q.value, q.unit
    (1.5, 'x')
    """
    m = _QUANTITY.fullmatch(raw)
    assert m is not None, raw  # the lexer guarantees the shape
    return Num(float(m.group(1)), m.group(2), raw, span)


def unescape(raw: str, span: Span, sink: list[Diagnostic]) -> str:
    """Decode a STRING token (quotes included): \\" \\\\ \\n \\t \\r \\0 \\uXXXX."""
    out: list[str] = []
    body, i = raw[1:-1], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        esc = body[i + 1]
        if esc in _ESCAPES:
            out.append(_ESCAPES[esc])
            i += 2
        elif esc == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6]):
            out.append(_code_point(body[i + 2 : i + 6], span, i, sink))
            i += 6
        else:
            at = Span(span.file, span.line, span.col + i + 1, span.line, span.col + i + 3)
            sink.append(Diagnostic.error(
                "P0009", f"unknown escape sequence '\\{esc}' in a string", at,
                'escapes are \\" \\\\ \\n \\t \\r \\0 and \\uXXXX'))
            i += 2
    return "".join(out)


def _code_point(hex4: str, span: Span, i: int, sink: list[Diagnostic]) -> str:
    """The character of ``\\uXXXX``; a surrogate (half of a UTF-16 pair) is no character:
    P0009, so that no string in the IR fails to encode as UTF-8."""
    c = int(hex4, 16)
    if not 0xD800 <= c <= 0xDFFF:
        return chr(c)
    at = Span(span.file, span.line, span.col + i + 1, span.line, span.col + i + 7)
    sink.append(Diagnostic.error("P0009", f"'\\u{hex4}' is a lone surrogate, not a character", at,
                                 "write the character itself: specs are UTF-8"))
    return ""


# ------------------------------------------------------------------- converters

MAX_DIGITS = 100  # longer integers are out of every range (and Python will not parse 4300+)


def describe(v: Value) -> str:
    """How a value reads in a message: 'a string', 'the number 3', ..."""
    if isinstance(v, Str):
        return "a string"
    if isinstance(v, Num):
        return f"the number {v.raw}"
    if isinstance(v, Word):
        return f"the word '{v.name}'"
    if isinstance(v, ListV):
        return "a list"
    if isinstance(v, RangeV):
        return "a range"
    if isinstance(v, RatioV):
        return "a ratio"
    return "a layer selector"


def wrong_type(v: Value, key: str, expected: str, sink: list[Diagnostic],
               hint: str | None = None) -> None:
    sink.append(Diagnostic.error(
        "P0103", f"'{key}' expects {expected}, got {describe(v)}", v.span, hint))


def string(v: Value, key: str, sink: list[Diagnostic]) -> str | None:
    if isinstance(v, Str):
        return v.text
    wrong_type(v, key, "a string", sink, 'write it in double quotes: "..."')
    return None


def fraction(v: Value, key: str, sink: list[Diagnostic]) -> float | None:
    """A fraction in [0, 1], written as a percentage (20%) or a plain number (0.2)."""
    if not isinstance(v, Num) or v.unit not in ("", "%"):
        _bad_unit_or_type(v, key, "a percentage such as 20% (or a fraction 0.2)", sink)
        return None
    value = v.value / 100 if v.unit == "%" else v.value
    if not 0.0 <= value <= 1.0:
        hint = f"did you mean {v.raw}%?" if v.unit == "" and v.value <= 100 else None
        sink.append(Diagnostic.error(
            "P0202", f"'{key}' must be between 0% and 100%, got {v.raw}", v.span, hint))
        return None
    return value


def integer(v: Value, key: str, sink: list[Diagnostic]) -> int | None:
    if not isinstance(v, Num) or v.unit != "":
        _bad_unit_or_type(v, key, "a whole number", sink)
        return None
    if not v.raw.isdigit():
        sink.append(Diagnostic.error("P0109", f"'{key}' must be a whole number, got {v.raw}",
                                     v.span))
        return None
    if len(v.raw) > MAX_DIGITS:
        sink.append(Diagnostic.error("P0216", f"'{key}' has {len(v.raw)} digits: out of range",
                                     v.span))
        return None
    return int(v.raw)  # exact


def count(v: Value, key: str, sink: list[Diagnostic]) -> int | None:
    """A count with an optional unit: 110M, 1.2B, 500K, 135000000."""
    if not isinstance(v, Num) or (v.unit and v.unit not in COUNT_UNITS):
        _bad_unit_or_type(v, key, "a count such as 110M or 1.2B", sink)
        return None
    if not _finite(v, key, sink):
        return None
    return round(v.value * COUNT_UNITS.get(v.unit, 1))


def number(v: Value, key: str, sink: list[Diagnostic]) -> float | None:
    if not isinstance(v, Num) or v.unit != "":
        _bad_unit_or_type(v, key, "a plain number", sink)
        return None
    return v.value if _finite(v, key, sink) else None


def multiplier(v: Num, key: str, sink: list[Diagnostic]) -> float | None:
    if v.unit != "x":
        _bad_unit_or_type(v, key, "a multiple such as 1.5x", sink)
        return None
    return v.value if _finite(v, key, sink) else None


def _finite(v: Num, key: str, sink: list[Diagnostic]) -> bool:
    """False (and P0202) for numbers too large to compute with, such as 1e999."""
    if math.isfinite(v.value) and v.value < 1e30:
        return True
    sink.append(Diagnostic.error("P0202", f"'{key}': {v.raw} is too large", v.span))
    return False


def _bad_unit_or_type(v: Value, key: str, expected: str, sink: list[Diagnostic]) -> None:
    if isinstance(v, Num) and v.unit not in ("", "%", "x") and v.unit not in COUNT_UNITS:
        sink.append(Diagnostic.error(
            "P0105", f"unknown unit '{v.unit}' in {v.raw}", v.span,
            "units are % (percent), x (times dense) and K, M, B (counts)"))
    else:
        wrong_type(v, key, expected, sink)


def word(v: Value, key: str, kind: type[E], sink: list[Diagnostic],
         aliases: dict[str, E] | None = None) -> E | None:
    """An enum member named by a bare word (its ``value``), with 'did you mean'."""
    choices: dict[str, E] = {str(m.value): m for m in kind}
    choices.update(aliases or {})
    if not isinstance(v, Word):
        wrong_type(v, key, "one of " + ", ".join(choices), sink)
        return None
    if v.name in choices:
        return choices[v.name]
    sink.append(Diagnostic.error(
        "P0104", f"unknown {key} '{v.name}'", v.span, suggest(v.name, list(choices))))
    return None


def boolean(v: Value, key: str, sink: list[Diagnostic]) -> bool | None:
    names = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False}
    if isinstance(v, Word) and v.name in names:
        return names[v.name]
    if isinstance(v, Word):
        sink.append(Diagnostic.error("P0104", f"'{key}' is on or off, not '{v.name}'", v.span))
    else:
        wrong_type(v, key, "on or off", sink)
    return None


def selector(v: Value, key: str, sink: list[Diagnostic]) -> LayerSelector | None:
    if isinstance(v, LayerSelector):
        return v
    wrong_type(v, key, "a layer selector such as layers[0] or layers[-2:]", sink)
    return None


def name(v: Value, key: str, sink: list[Diagnostic]) -> str | None:
    """A reference to a declared name (a dataset): a bare word."""
    if isinstance(v, Word):
        return v.name
    hint = f"write the name without quotes: {v.text}" if isinstance(v, Str) else None
    wrong_type(v, key, "a dataset name", sink, hint)
    return None


def items(v: Value) -> tuple[Scalar, ...]:
    """A list's items; a single scalar stands for a one-element list."""
    return v.items if isinstance(v, ListV) else (v,)


def suggest(got: str, choices: list[str]) -> str | None:
    """'did you mean ...?' for the closest choice, else the list of choices.

    >>> suggest("multiprunr", ["multipruner", "magnitude"])
    "did you mean 'multipruner'?"
    >>> suggest("xyz", ["on", "off"])
    'expected one of: on, off'
    """
    close = difflib.get_close_matches(got, choices, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "expected one of: " + ", ".join(choices) if choices else None
