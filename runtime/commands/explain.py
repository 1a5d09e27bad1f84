"""``prunec explain SPEC``: what a build would do, in words and a table (``--format json``).

Runs nothing and imports no torch: the model's shape comes from its config.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import Diagnostic
from prunec.compiler.driver import check_source, read_source
from prunec.runtime.commands.common import RAW

HELP = """\
Say what building the spec would do: the model and its parameter count, the datasets and
their sizes, the static method or manual plan (parameters before/after where it can be
known), the probe policy, gates and exports. Runs nothing.

example:
  prunec explain specs/smollm2-manual.prune"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("explain", help="explain what building a spec would do",
                              description=HELP, formatter_class=RAW)
    p.add_argument("spec", metavar="SPEC", help="the spec file to explain")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="sentences and a table (default) or JSON on stdout")
    p.set_defaults(handler=run_explain)


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
