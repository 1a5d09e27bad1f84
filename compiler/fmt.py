"""Canonical formatting of .prune source, comments kept.

Works on the parse tree (not the IR), so what the author wrote stays: ``20%`` is not
rewritten as ``0.2`` and strings keep their escapes. The layout is fixed: two-space
indentation, one entry per line, ``key = value``, ``[a, b]`` lists, ``0% .. 50%`` ranges,
``layers[*]`` for every layer, no trailing commas, one blank line between top-level
blocks, author's blank lines kept (at most one). Comments stay on their line: a comment
after code stays after that code; a comment on its own line goes before the next line of
code at that line's indentation. Invariants (tested over every spec and fixture):
``fmt(fmt(s)) == fmt(s)`` and ``parse(fmt(s))`` lowers to the same IR as ``parse(s)``
(compared with ``strip_spans``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from lark import Token, Tree

from prunec.grammar.parser import Comment, comments, parse

INDENT = "  "
BLOCKS = ("model", "dataset", "prune", "probe", "export", "plan", "gates")


@dataclass(frozen=True)
class Unit:
    """One output line of code: its depth, text and the source lines it came from."""

    depth: int
    text: str
    first: int
    last: int
    kind: str  # "entry" | "item" (a whole block on one line) | "open" | "close"


def format_source(text: str) -> str:
    """The canonical form of ``text``; raises ``SyntaxProblem`` if it does not parse.

    >>> print(format_source('model demo {dtype=bf16}  # m\\nprobe{ratio=40%,skip=[layers[0..2]]}'))
    model demo {
      dtype = bf16
    }  # m
    <BLANKLINE>
    probe {
      ratio = 40%
      skip = [layers[0..2]]
    }
    <BLANKLINE>
    """
    tree = parse(text)
    cmts = comments(text)
    units = [u for item in tree.children if isinstance(item, Tree)
             for u in _item_units(item, cmts)]
    return _layout(units, list(cmts))


# ------------------------------------------------------------------------ units


def _item_units(t: Tree[Token], cmts: tuple[Comment, ...]) -> Iterator[Unit]:
    data = str(t.data)
    if data == "attr":
        yield Unit(0, _attr(t), t.meta.line, t.meta.end_line, "entry")
        return
    if data in ("plan", "gates"):
        lines = [_action(c) for c in t.children if isinstance(c, Tree)]
        yield from _lines_block(data, lines, t, cmts)
        return
    header, body = _header(t)
    if body is None:
        yield Unit(0, header, t.meta.line, t.meta.end_line, "item")
    else:
        yield from _body_units(header, body, t.meta.line, 0, cmts)


def _header(t: Tree[Token]) -> tuple[str, Tree[Token] | None]:
    kids = t.children
    body = kids[-1] if kids and isinstance(kids[-1], Tree) and kids[-1].data == "body" else None
    parts = [str(t.data)] + [_value(k) if isinstance(k, Tree) else str(k)
                             for k in (kids[:-1] if body is not None else kids) if k is not None]
    return " ".join(parts), body


def _body_units(header: str, body: Tree[Token], first: int, depth: int,
                cmts: tuple[Comment, ...]) -> Iterator[Unit]:
    entries = [e for e in body.children if isinstance(e, Tree)]
    start, end = body.meta.line, body.meta.end_line
    if not entries and not any(start <= c.line <= end for c in cmts):
        yield Unit(depth, header + " {}", first, end, "item")
        return
    yield Unit(depth, header + " {", first, start, "open")
    for e in entries:
        if e.data == "attr":
            yield Unit(depth + 1, _attr(e), e.meta.line, e.meta.end_line, "entry")
        else:
            yield from _group_units(e, depth + 1, cmts)
    yield Unit(depth, "}", end, end, "close")


def _group_units(g: Tree[Token], depth: int, cmts: tuple[Comment, ...]) -> Iterator[Unit]:
    name = str(g.children[0])
    attrs = [a for a in g.children[1:] if isinstance(a, Tree)]
    start, end = g.meta.line, g.meta.end_line
    if not attrs and not any(start <= c.line <= end for c in cmts):
        yield Unit(depth, name + " {}", start, end, "item")
        return
    yield Unit(depth, name + " {", start, start, "open")
    for a in attrs:
        yield Unit(depth + 1, _attr(a), a.meta.line, a.meta.end_line, "entry")
    yield Unit(depth, "}", end, end, "close")


def _lines_block(head: str, lines: list[tuple[str, Tree[Token]]], t: Tree[Token],
                 cmts: tuple[Comment, ...]) -> Iterator[Unit]:
    start, end = t.meta.line, t.meta.end_line
    if not lines and not any(start <= c.line <= end for c in cmts):
        yield Unit(0, head + " {}", start, end, "item")
        return
    yield Unit(0, head + " {", start, start, "open")
    for text, node in lines:
        yield Unit(1, text, node.meta.line, node.meta.end_line, "entry")
    yield Unit(0, "}", end, end, "close")


# ----------------------------------------------------------------------- layout


@dataclass
class _Out:
    lines: list[str]
    last_line: int = 0  # last source line written out
    after_open: bool = True  # no blank line right after '{' or at the start
    prev_block: bool = False  # the previous top-level unit was a block

    def blank(self, gap: int, force: bool = False) -> None:
        if not self.after_open and (gap > 1 or force):
            self.lines.append("")
        self.after_open = False


def _layout(units: list[Unit], cmts: list[Comment]) -> str:
    out = _Out([])
    ci = 0
    for i, u in enumerate(units):
        lead = []
        while ci < len(cmts) and cmts[ci].line < u.first:
            lead.append(cmts[ci])
            ci += 1
        _top_blank(out, u, lead)
        _own_line(out, lead, u.depth + (1 if u.kind == "close" else 0), u)
        next_first = units[i + 1].first if i + 1 < len(units) else None
        trail = ""
        if ci < len(cmts) and cmts[ci].line == u.last and next_first != u.last:
            trail, ci = "  " + cmts[ci].text, ci + 1
        out.lines.append(INDENT * u.depth + u.text + trail)
        out.last_line = max(out.last_line, u.last)
        out.after_open = u.kind == "open"
    _own_line(out, cmts[ci:], 0, None)
    return "\n".join(out.lines) + "\n" if out.lines else ""


def _top_blank(out: _Out, u: Unit, lead: list[Comment]) -> None:
    if u.kind == "close":
        return
    first = lead[0].line if lead else u.first
    is_block = u.kind != "entry"
    force = u.depth == 0 and (out.prev_block or is_block) and bool(out.lines)
    out.blank(first - out.last_line, force)
    if u.depth == 0:
        out.prev_block = is_block


def _own_line(out: _Out, cmts: list[Comment], depth: int, u: Unit | None) -> None:
    """Comments on lines of their own; the blank before the first is the caller's."""
    for i, c in enumerate(cmts):
        if i or u is None:
            out.blank(c.line - out.last_line)
        out.lines.append(INDENT * depth + c.text)
        out.last_line = c.line
    if cmts and u is not None and u.kind != "close":
        out.blank(u.first - out.last_line)


# ----------------------------------------------------------------------- values


def _attr(t: Tree[Token]) -> str:
    key, value = t.children
    return f"{key} = {_value(value)}"


def _value(v: Tree[Token] | Token | None) -> str:
    if v is None:
        return ""
    if isinstance(v, Token):
        return str(v)
    data, kids = str(v.data), v.children
    if data in ("string", "number", "ident"):
        return str(kids[0])
    if data == "array":
        return "[" + ", ".join(_value(k) for k in kids) + "]"
    if data == "interval":
        return f"{_value(kids[0])} .. {_value(kids[1])}"
    if data == "ratio":
        return ":".join(_value(k) for k in kids)
    if data == "signed":
        return ("-" if kids[0] is not None else "") + str(kids[1])
    return _selector(data, kids)


def _selector(data: str, kids: Sequence[Tree[Token] | Token | None]) -> str:
    if data == "sel_all":
        return "layers[*]"
    if data == "sel_index":
        return f"layers[{_value(kids[0])}]"
    sep = ":" if data == "sel_slice" else ".."
    return f"layers[{_value(kids[0])}{sep}{_value(kids[1])}]"


def _action(t: Tree[Token]) -> tuple[str, Tree[Token]]:
    data, k = str(t.data), t.children
    if data == "remove":
        text = f"remove {_value(k[0])}.{k[1]}"
    elif data == "keep_count":
        text = f"keep {k[0]} {k[1]} in {_value(k[2])}"
    elif data == "keep_list":
        text = f"keep {k[0]} {_value(k[1])} in {_value(k[2])}"
    elif data == "params_gate":
        text = f"params <= {k[0]}"
    else:
        text = f"perplexity({k[0]}) " + " and ".join(_bound(b) for b in k[1:])
    return text, t


def _bound(b: Tree[Token] | Token | None) -> str:
    assert isinstance(b, Tree)
    return f"<= {b.children[0]}" + (" dense" if b.children[1] is not None else "")
