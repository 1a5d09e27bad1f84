"""Block schemas: every key of a block once, with its reader, default and where it applies.

A ``Schema`` lists a block's ``Key``s. Lowering sorts a block's entries through its schema
(``fields``): an unknown key is P0101 (the hint names the block's keys, each once), a key
given twice P0102, and a key that does not apply to the block's kind — the static method,
the dataset format, the model source — P0211 (the one place that rule lives). ``Fields.get``
reads a value with the key's reader and falls back to the key's default, so lowering goes on
and reports every problem in one run. ``explain`` shows defaults from the keys, and a test
checks that docs/language.md shows every key and spells every default as ``Key.shown``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from prunec.compiler import syntax as sx
from prunec.compiler.diagnostics import Diagnostic, Span

T = TypeVar("T")
Reader = Callable[[sx.Value, str, list[Diagnostic]], T | None]
Entries = tuple["sx.Attr | sx.Group", ...]


@dataclass(frozen=True)
class Key(Generic[T]):
    """One key of a block. ``form``: ``value`` (key = v), ``group`` (key { ... }) or both."""

    name: str
    read: Reader[T] | None  # None: the block's own code reads it (a group, a required key)
    default: T
    shown: str | None = None  # the default as written in a spec; None: required or derived
    applies: tuple[str, ...] = ()  # the kinds (method, format, source) it applies to; () all
    form: str = "value"
    hint: str | None = None  # for P0211


@dataclass(frozen=True)
class Schema:
    """The keys of one block; ``noun`` names its kinds in P0211 messages ("datasets")."""

    block: str
    keys: tuple[Key[Any], ...]
    noun: str = ""

    def names(self, form: str) -> tuple[str, ...]:
        return tuple(k.name for k in self.keys if k.form in (form, "either"))

    def key(self, name: str) -> Key[Any]:
        return next(k for k in self.keys if k.name == name)


@dataclass(frozen=True)
class Fields:
    """The entries of one block by key, after unknown/duplicate/misplaced keys were reported."""

    attrs: dict[str, sx.Value]
    groups: dict[str, sx.Group]
    span: Span

    def get(self, key: Key[T], sink: list[Diagnostic]) -> T:
        value = self.attrs.get(key.name)
        if value is None or key.read is None:
            return key.default
        got = key.read(value, key.name, sink)
        return key.default if got is None else got


def fields(entries: Entries, schema: Schema, where: str, kind: str | None, span: Span,
           sink: list[Diagnostic]) -> Fields:
    """Sort a block's entries by key; report unknown, repeated and inapplicable keys.
    ``kind`` is the block's method/format/source (None when unknown: no P0211)."""
    out = Fields({}, {}, span)
    for e in entries:
        key, is_attr = (e.key, True) if isinstance(e, sx.Attr) else (e.name, False)
        if key not in schema.names("value" if is_attr else "group"):
            _unknown_key(e, key, where, schema, sink)
        elif key in out.attrs or key in out.groups:
            sink.append(Diagnostic.error("P0102", f"'{key}' is given twice in {where}", e.span))
        elif _applies(schema, schema.key(key), kind, e, sink):
            if isinstance(e, sx.Attr):
                out.attrs[key] = e.value
            else:
                out.groups[key] = e
    return out


def _applies(schema: Schema, key: Key[Any], kind: str | None, e: sx.Attr | sx.Group,
             sink: list[Diagnostic]) -> bool:
    if not key.applies or kind is None or kind in key.applies:
        return True
    noun = f" {schema.noun}" if schema.noun else ""
    span = e.value.span if isinstance(e, sx.Attr) else e.span
    sink.append(Diagnostic.error(
        "P0211", f"'{key.name}' applies to {join(key.applies)}{noun}, not {kind}", span,
        key.hint))
    return False


def join(words: tuple[str, ...]) -> str:
    """``a``, ``a and b``, ``a, b and c``.

    >>> join(("multipruner",)), join(("jsonl", "hf-disk")), join(("a", "b", "c"))
    ('multipruner', 'jsonl and hf-disk', 'a, b and c')
    """
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _unknown_key(e: sx.Attr | sx.Group, key: str, where: str, schema: Schema,
                 sink: list[Diagnostic]) -> None:
    hint: str | None
    if isinstance(e, sx.Attr) and key in schema.names("group"):
        hint = f"'{key}' is a group: write {key} {{ ... }}"
    elif isinstance(e, sx.Group) and key in schema.names("value"):
        hint = f"write {key} = <value>"
    else:
        hint = sx.suggest(key, [k.name for k in schema.keys])
    sink.append(Diagnostic.error("P0101", f"unknown key '{key}' in {where}", e.span, hint))
