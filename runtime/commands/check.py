"""``prunec check SPEC...``: parse, lower and check specs against the model's config.

Never reads weights and imports no torch. Exit 0 when every spec is clean (warnings
allowed), 1 when any has an error. Diagnostics go to stderr (text) or stdout (``--format
json``).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prunec.compiler.diagnostics import Diagnostic, Severity
from prunec.compiler.driver import check_source, read_source
from prunec.runtime.commands.common import RAW

HELP = """\
Parse and check .prune specs against the language and the model's config (never its
weights): undefined or duplicate names, out-of-range ratios, layer selectors outside the
model, head counts that break grouped-query attention, missing data files, ...
Exit status: 0 when every spec is clean (warnings allowed), 1 when any has an error.

examples:
  prunec check specs/*.prune
  prunec check --format json specs/smollm2-probe.prune > diagnostics.json"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("check", help="check .prune specs for errors", description=HELP,
                              formatter_class=RAW)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files to check")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text diagnostics on stderr (default) or JSON on stdout")
    p.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    results: dict[str, list[Diagnostic]] = {}
    for path in args.specs:
        text, diags = read_source(path)
        if text is not None:
            _, diags = check_source(text, path)
        results[path] = diags
    if args.format == "json":
        from prunec.compiler.render import dumps_json

        print(dumps_json(results))
    else:
        _report(results)
    return 1 if any(d.is_error for ds in results.values() for d in ds) else 0


def _report(results: dict[str, list[Diagnostic]]) -> None:
    from prunec.compiler.render import print_diagnostics

    for path, diags in results.items():
        print_diagnostics(diags)
        errors = sum(d.is_error for d in diags)
        warnings = sum(d.severity is Severity.WARNING for d in diags)
        status = "ok" if not errors else f"{errors} error{'s' * (errors != 1)}"
        extra = f", {warnings} warning{'s' * (warnings != 1)}" if warnings else ""
        print(f"{path}: {status}{extra}", file=sys.stderr)
