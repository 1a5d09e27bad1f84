"""``prunec fmt [--check] SPEC...``: canonical formatting, comments kept.

Exit 0 when nothing is wrong, 1 when a file has syntax errors or (with ``--check``) would
change. Imports no torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import Diagnostic, Span
from prunec.compiler.driver import read_source, syntax_diagnostic
from prunec.grammar.parser import SyntaxProblem, parse_all
from prunec.runtime.commands.common import RAW

HELP = """\
Rewrite .prune specs in the canonical layout (two-space indent, one entry per line,
comments kept). With --check, change nothing and exit 1 if any file would change.

examples:
  prunec fmt specs/my.prune
  prunec fmt --check specs/*.prune     # in CI"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("fmt", help="format .prune specs canonically", description=HELP,
                              formatter_class=RAW)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files to format in place")
    p.add_argument("--check", action="store_true",
                   help="only report files that would change (exit 1 if any)")
    p.set_defaults(handler=run_fmt)


def run_fmt(args: argparse.Namespace) -> int:
    status = 0
    for path in args.specs:
        status = max(status, _fmt_one(path, args.check))
    return status


def _fmt_one(path: str, check_only: bool) -> int:
    from prunec.compiler.fmt import format_source
    from prunec.compiler.render import print_diagnostics

    text, diags = read_source(path)
    if text is None:
        print_diagnostics(diags)
        return 1
    try:
        new = format_source(text)
    except SyntaxProblem as p:
        problems = parse_all(text)[1] or [p]
        print_diagnostics([syntax_diagnostic(q, path) for q in problems], sources={path: text})
        return 1
    except RecursionError:
        print_diagnostics([Diagnostic.error("P0003", "the spec is nested too deeply",
                                            Span.unknown(path))])
        return 1
    if new == text:
        return 0
    if check_only:
        print(f"would reformat {path}", file=sys.stderr)
        return 1
    Path(path).write_text(new, encoding="utf-8")
    print(f"reformatted {path}", file=sys.stderr)
    return 0
