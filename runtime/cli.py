"""The ``prunec`` command line: one argparse tree, one module per command.

``COMMANDS`` lists the modules of ``prunec.runtime.commands`` in the order ``--help`` shows
them; each exposes ``register(subparsers)`` and adds its command with
``set_defaults(handler=fn)`` where ``fn(args) -> int`` is the exit status. Those modules
must not import torch at import time (``prunec check`` and ``--help`` stay fast); handlers
import what they need.

Exit codes: 0 success, 1 errors in the user's input or a failed gate, 2 usage errors,
130 interrupted. A ``CompileError`` is rendered as diagnostics; any other exception is a
compiler bug and is reported as such, exit 3 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prunec import __version__
from prunec.compiler.diagnostics import CompileError
from prunec.runtime.commands import build, check, eval, explain, fmt, generate, plan, run

COMMANDS = (check, fmt, explain, build, eval, plan, run, generate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prunec",
        description="Compile .prune specs into smaller, faster transformers (ONNX).",
    )
    parser.add_argument("--version", action="version", version=f"prunec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except CompileError as exc:
        from prunec.compiler.render import print_diagnostics

        print_diagnostics(exc.diagnostics)
        return 1
    except KeyboardInterrupt:
        print("prunec: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a compiler bug, not a user error
        if args.debug:
            raise
        print(f"prunec: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        print("prunec: this is a bug in prunec; rerun with --debug for the traceback",
              file=sys.stderr)
        return 3
