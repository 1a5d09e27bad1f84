"""The front-end's CLI commands: ``prunec check``, ``prunec fmt`` and ``prunec explain``.

``register(subparsers)`` is called by ``prunec.runtime.cli``. Handlers return the exit
status: 0 clean, 1 problems in the input (errors, or files ``fmt --check`` would change),
2 usage errors (argparse). Diagnostics go to stderr, results (JSON, explanations) to
stdout. Importing this module imports no torch, and neither does running these commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import Diagnostic, Severity, Span
from prunec.compiler.driver import check_source, read_source, syntax_diagnostic
from prunec.grammar.parser import SyntaxProblem, parse_all

CHECK_HELP = """\
Parse and check .prune specs against the language and the model's config (never its
weights): undefined or duplicate names, out-of-range ratios, layer selectors outside the
model, head counts that break grouped-query attention, missing data files, ...
Exit status: 0 when every spec is clean (warnings allowed), 1 when any has an error.

examples:
  prunec check specs/*.prune
  prunec check --format json specs/smollm2-probe.prune > diagnostics.json"""

FMT_HELP = """\
Rewrite .prune specs in the canonical layout (two-space indent, one entry per line,
comments kept). With --check, change nothing and exit 1 if any file would change.

examples:
  prunec fmt specs/my.prune
  prunec fmt --check specs/*.prune     # in CI"""

EXPLAIN_HELP = """\
Say what building the spec would do: the model and its parameter count, the datasets and
their sizes, the static method or manual plan (parameters before/after where it can be
known), the probe policy, gates and exports. Runs nothing.

example:
  prunec explain specs/smollm2-manual.prune"""


def register(subparsers: Any) -> None:
    """Add check, fmt and explain to the ``prunec`` argument parser."""
    fmt_class = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser("check", help="check .prune specs for errors",
                              description=CHECK_HELP, formatter_class=fmt_class)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files to check")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="text diagnostics on stderr (default) or JSON on stdout")
    p.set_defaults(handler=run_check)
    p = subparsers.add_parser("fmt", help="format .prune specs canonically",
                              description=FMT_HELP, formatter_class=fmt_class)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files to format in place")
    p.add_argument("--check", action="store_true",
                   help="only report files that would change (exit 1 if any)")
    p.set_defaults(handler=run_fmt)
    p = subparsers.add_parser("explain", help="explain what building a spec would do",
                              description=EXPLAIN_HELP, formatter_class=fmt_class)
    p.add_argument("spec", metavar="SPEC", help="the spec file to explain")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="sentences and a table (default) or JSON on stdout")
    p.set_defaults(handler=run_explain)


# ------------------------------------------------------------------------ check


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


# -------------------------------------------------------------------------- fmt


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


# ---------------------------------------------------------------------- explain


def run_explain(args: argparse.Namespace) -> int:
    from prunec.compiler.explain import explain, print_explanation
    from prunec.compiler.render import print_diagnostics
    from prunec.compiler.shape import ShapeProblem, model_shape

    text, diags = read_source(args.spec)
    spec = None
    if text is not None:
        spec, diags = check_source(text, args.spec)
    print_diagnostics(diags)
    if spec is None:
        return 1
    spec_dir = Path(args.spec).parent
    try:
        shape = model_shape(spec.model, spec_dir)
    except ShapeProblem as p:
        print_diagnostics([Diagnostic.error(p.code, p.message, spec.model.span, p.hint)])
        return 1
    exp = explain(spec, shape, spec_dir)
    if args.format == "json":
        print(json.dumps({"steps": list(exp.steps), "rows": [vars(r) for r in exp.rows]},
                         indent=2))
    else:
        print_explanation(exp)
    return 0
