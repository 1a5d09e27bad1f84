"""Source text -> Lark parse tree with positions, or a named ``SyntaxProblem``.

Owns the one LALR parser of ``prune.lark`` (built once per process and cached on disk by
Lark), the comment scanner used by the formatter, and the mapping of parse failures to
named errors (the idea of Lark's ``match_examples``: each code below lists snippets that
fail in the same LALR state as the user's input; matched on the state number so the
answer does not depend on what precedes the error). ``parse_all`` recovers item by item
to report up to ``MAX_PROBLEMS`` errors in one run. Invariants:
- ``parse`` either returns a tree or raises ``SyntaxProblem``; never another exception
  for any ``str`` input (Lark's own errors are translated here);
- line/col are 1-based, end columns exclusive (Lark's ``propagate_positions``);
- this module knows nothing of the IR or diagnostics (the compiler imports grammar,
  never the reverse); codes are plain strings documented in ``prunec.compiler.codes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import (
    LarkError,
    UnexpectedCharacters,
    UnexpectedEOF,
    UnexpectedInput,
    UnexpectedToken,
)

GRAMMAR_PATH = Path(__file__).with_name("prune.lark")


@dataclass(frozen=True)
class SyntaxProblem(Exception):
    """A parse failure with a code (P00xx), a 1-based position and an optional hint."""

    code: str
    message: str
    line: int
    col: int
    end_col: int
    hint: str | None = None


@dataclass(frozen=True)
class Comment:
    """A ``#`` or ``//`` comment: where it starts and its text (without the newline)."""

    line: int
    col: int
    text: str


@lru_cache(maxsize=1)
def parser() -> Lark:
    """The LALR parser, built once (Lark caches the analysed grammar on disk too)."""
    return Lark(
        GRAMMAR_PATH.read_text(encoding="utf-8"),
        parser="lalr",
        lexer="contextual",
        propagate_positions=True,
        maybe_placeholders=True,
        cache=True,
    )


def parse(text: str) -> Tree[Token]:
    """Parse a whole spec; raise ``SyntaxProblem`` on the first syntax error."""
    try:
        return parser().parse(text)
    except UnexpectedInput as exc:
        raise _problem(exc, text) from None
    except LarkError as exc:  # pragma: no cover - Lark internals; keep the promise anyway
        raise SyntaxProblem("P0010", f"syntax error: {exc}", 1, 1, 2) from None


MAX_PROBLEMS = 10
_ITEM_START = re.compile(r"(?:model|dataset|prune|plan|probe|gates|export)\b|[A-Za-z_][\w-]*\s*=")


def parse_all(text: str) -> tuple[Tree[Token] | None, list[SyntaxProblem]]:
    """The tree, or up to ``MAX_PROBLEMS`` syntax problems, one per faulty top-level item.

    Recovery: after an error, the top-level item holding it (from the last line that starts
    an item at column 1 up to the next one) is blanked out — positions elsewhere are kept —
    and the rest is parsed again. An error on the first token of an item blames the item
    before it (an unclosed block). An error at the end of the file ends the search."""
    problems: list[SyntaxProblem] = []
    while len(problems) < MAX_PROBLEMS:
        try:
            tree = parse(text)
        except SyntaxProblem as p:
            problems.append(p)
            text = _blank_item(text, p)
            if not text:
                break
        else:
            return (None, problems) if problems else (tree, [])
    return None, problems


def _blank_item(text: str, p: SyntaxProblem) -> str:
    """``text`` with the item holding ``p`` replaced by spaces; '' when nothing is left."""
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if _ITEM_START.match(line)]
    err = p.line - 1
    before = [i for i in starts if i < err or (i == err and p.col > 1)]
    after = [i for i in starts if i > err or (i == err and p.col == 1)]
    if p.code == "P0005" or not after:
        return ""
    lo, hi = (before[-1] if before else 0), after[0]
    if hi <= lo:
        return ""
    blanked = [re.sub(r"[^\s]", " ", line) for line in lines[lo:hi]]
    return "\n".join(lines[:lo] + blanked + lines[hi:])


_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|(#|//)[^\n]*')


def comments(text: str) -> tuple[Comment, ...]:
    """Every comment in ``text`` (strings are skipped, so ``"a#b"`` holds no comment)."""
    out: list[Comment] = []
    line_starts = _line_starts(text)
    for m in _COMMENT_OR_STRING.finditer(text):
        if m.group(1) is None:
            continue
        line = _line_of(line_starts, m.start())
        out.append(Comment(line, m.start() - line_starts[line - 1] + 1, m.group(0).rstrip()))
    return tuple(out)


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _line_of(starts: list[int], offset: int) -> int:
    import bisect

    return bisect.bisect_right(starts, offset)


# ---------------------------------------------------------------- named parse errors

# code -> (message, hint, example snippets failing in the same parser state).
ERROR_EXAMPLES: dict[str, tuple[str, str | None, tuple[str, ...]]] = {
    "P0006": (
        "expected a value after '='",
        "a value is a string, a number (20%, 1.5x, 110M), a word, a list or a selector",
        ("name = }", "probe { ratio = }", "probe { ratio = = 3 }",
         "probe { ratio = ,", "probe { ratio = ]", "probe { ratio = 3 .. }",
         "probe { ratio = 3 : }", "name = ."),
    ),
    "P0007": (
        "expected '=' after the key",
        "entries inside a block are written `key = value`",
        ("probe { ratio 4 }", "probe { ratio }", "probe { ratio \"x\" }", "name 3",
         "probe { ratio [ }", "probe { a { b 3 } }", "probe { ratio: 3 }", "name }",
         "probe { ratio . }", "probe { a { b } }"),
    ),
    "P0011": (
        "expected '{' to open the block",
        None,
        ("prune multipruner ratio", "probe ratio", "prune multipruner }", "plan remove",
         "gates params", "prune }", "prune \"x\"",),
    ),
    "P0012": (
        ("expected a top-level item: model, dataset, prune, plan, probe, gates, export or "
         "`key = value`"),
        None,
        ("}", "3", "\"x\"", "[", "= 3", "model demo }", "name = 3 }", "model demo name = 3 }", ",", ".", "(", "model demo { } }"),
    ),
    "P0013": (
        "malformed layer selector",
        "selectors look like layers[3], layers[-2:], layers[3..10] or layers[*]",
        ("probe { skip = layers[ }", "probe { skip = layers[a] }",
         "probe { skip = layers[1 2] }", "probe { skip = layers[1:2:3] }",
         "probe { skip = layers[\"a\"] }", "probe { skip = layers[- }",
         "probe { skip = layers[1 }", "probe { skip = layers[1.. }"),
    ),
    "P0014": (
        "malformed gate",
        "gates are `perplexity(dataset) <= 1.5x dense`, `... <= 30` or `params <= 110M`",
        ("gates { perplexity eval }", "gates { perplexity( }", "gates { perplexity(a }",
         "gates { perplexity(a) }", "gates { params 3 }",
         "gates { params <= }", "gates { params <= a }", "gates { ppl }",
         "gates { perplexity(a) <= }", "gates { perplexity(a) <= 1 and }",
         "gates { perplexity(a) <= 1x dense dense }", "gates { 3 }",
         "gates { perplexity(a) <= 1 or <= 2 }"),
    ),
    "P0015": (
        "malformed plan action",
        ("actions are `remove layers[i].mlp|attn`, `keep N channels|heads in layers[i]` or "
         "`keep channels|heads [0, 1] in layers[i]`; settings are `key = value`"),
        ("plan { remove }", "plan { remove layers }", "plan { remove layers[1] }",
         "plan { remove layers[1]. }", "plan { keep }", "plan { keep 3 }",
         "plan { keep 3 heads }", "plan { keep 3 heads in }", "plan { keep heads }",
         "plan { keep heads [1] }", "plan { keep heads [1] in }", "plan { drop }",
         "plan { 3 }", "plan { keep heads 3 in layers[1] }", "plan { keep 3 heads layers[1] }",
         "plan { remove layers[1] mlp }", "plan { keep heads [1] layers[1] }"),
    ),
    "P0018": (
        "unexpected token after a value",
        "separate list items with ','; give each key one value; close blocks with '}'",
        ("probe { ratio = 3 3 }", "probe { ratio = 3 \"x\" }", "probe { 3 }",
         "probe { \"x\" }", "probe { ratio = 3 = }", "probe { ratio = layers keep }",
         "probe { ratio = 3 [ }", "probe { ratio = a b c }", "name = [3 4]", "name = [a b]",
         "name = [\"a\" \"b\"]", "name = [3 }", "probe { { }", "probe { . }",
         "probe { ratio = 3 ) }", "name = [layers[1] 2]", "name = [1 .. 2 3]"),
    ),
    "P0016": (
        "malformed list",
        "lists are written [a, b, c]; they do not nest",
        ("name = [3,,]", "name = [[", "name = [,]", "name = [3, }", "name = [3, ="),
    ),
    "P0017": (
        "expected a name here",
        ('blocks open with names: model KIND "path", dataset NAME FORMAT "path", '
         'prune METHOD { ... }, export KIND "file"'),
        ("model {", "model 3", "model \"x\"", "dataset {", "dataset a {", "dataset 3",
         "export {", "export 3", "model }", "export }", "dataset a 3", "prune 3",
         "dataset a }"),
    ),
}


def _problem(exc: UnexpectedInput, text: str) -> SyntaxProblem:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        return _bad_character(text, exc.pos_in_stream or 0, line, col)
    if isinstance(exc, UnexpectedEOF) or _is_eof(exc):
        return SyntaxProblem("P0005", "unexpected end of file", line, col, col + 1,
                             _unclosed(text))
    token = exc.token if isinstance(exc, UnexpectedToken) else None
    if token is not None and col == 1 and _ITEM_START.match(str(token) + " "):
        pos = exc.pos_in_stream or 0
        return SyntaxProblem("P0019", f"a block is still open where {_show(str(token))} "
                             "starts a new item", line, col, col + len(str(token)),
                             _unclosed(text[:pos]) + "; close it with '}'")
    code = _match(exc, text)
    message, hint, _ = ERROR_EXAMPLES.get(code, ("syntax error", None, ()))
    width = max(len(str(token)), 1) if token is not None else 1
    found = f" (found {_show(str(token))})" if token is not None else ""
    return SyntaxProblem(code, message + found, line, col, col + width, hint)


_BRACKETS = re.compile(r'"(?:[^"\\\n]|\\.)*"|(?:#|//)[^\n]*|([{}\[\]()])')
_PAIRS = {"}": "{", "]": "[", ")": "("}


def _unclosed(text: str) -> str:
    """A hint naming the innermost bracket left open at the end of ``text``."""
    stack: list[tuple[str, int]] = []
    for m in _BRACKETS.finditer(text):
        ch = m.group(1)
        if ch in ("{", "[", "("):
            stack.append((ch, m.start()))
        elif ch and stack and stack[-1][0] == _PAIRS[ch]:
            stack.pop()
    if not stack:
        return "the spec ends in the middle of an item"
    ch, at = stack[-1]
    line = text.count("\n", 0, at) + 1
    col = at - (text.rfind("\n", 0, at) + 1) + 1
    return f"the '{ch}' at line {line}, column {col} is never closed"


def _is_eof(exc: UnexpectedInput) -> bool:
    return isinstance(exc, UnexpectedToken) and exc.token.type == "$END"


def _match(exc: UnexpectedInput, text: str) -> str:
    """The code whose examples fail in the same parser state (and, best, on the same
    kind of token) as ``exc``. Unlike Lark's ``match_examples`` this compares the state
    number only, not the stack depth, so an error reads the same wherever it occurs."""
    if not isinstance(exc, UnexpectedToken):
        return "P0010"
    exact, by_state = _example_index()
    state = _state_of(exc)
    return exact.get((state, exc.token.type)) or by_state.get(state) or "P0010"


def _state_of(exc: UnexpectedToken) -> int:
    state = exc.state
    return int(getattr(state, "position", state))


@lru_cache(maxsize=1)
def _example_index() -> tuple[dict[tuple[int, str], str], dict[int, str]]:
    exact: dict[tuple[int, str], str] = {}
    by_state: dict[int, str] = {}
    for code, (_, _, examples) in ERROR_EXAMPLES.items():
        for example in examples:
            try:
                parser().parse(example)
            except UnexpectedToken as e:
                exact.setdefault((_state_of(e), e.token.type), code)
                by_state.setdefault(_state_of(e), code)
            except UnexpectedInput:
                continue
    return exact, by_state


def _bad_character(text: str, pos: int, line: int, col: int) -> SyntaxProblem:
    ch = text[pos] if 0 <= pos < len(text) else ""
    if ch == '"':
        return SyntaxProblem(
            "P0008", "unterminated string", line, col, col + 1,
            'a string closes with " on the same line; write \\" for a quote inside it',
        )
    return SyntaxProblem(
        "P0004", f"unexpected character {_show(ch)}", line, col, col + 1,
        _CHAR_HINTS.get(ch),
    )


_CHAR_HINTS = {
    "/": "comments start with # or //",
    "<": "bounds are written <=",
    "'": 'strings use double quotes: "..."',
    ";": "entries are separated by new lines or commas",
}


def _show(s: str) -> str:
    s = s if len(s) <= 40 else s[:37] + "..."
    return repr(s) if s.isprintable() else ascii(s)
