"""``prunec build SPEC [-o DIR] [-q] [--json] [--lock FILE] [--resume] [--batch-size N]
[--workers N] [--ray-address ADDR] [--device auto|cpu|cuda|cuda:N]``.

Builds the artifact (``prunec.runtime.build``): exit 0, or 1 when the spec has errors or a
gate fails (nothing is published then; each failed gate is a P0405 diagnostic on its spec
line), 130/143 on SIGINT/SIGTERM. ``--device`` replaces the spec's ``model { device }``; a
CUDA device torch does not find is a plain error (exit 1) before anything loads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import Diagnostic
from prunec.runtime.commands.common import (
    EXIT_FAILED,
    add_common,
    load_spec_or_raise,
    with_signals,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("build", help="compile a .prune spec into a pruned ONNX artifact")
    p.add_argument("spec", type=Path, help="the .prune file")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="artifact directory (default: the spec's output, else build/<name>)")
    p.add_argument("--json", action="store_true", help="print report.json instead of tables")
    p.add_argument("--lock", type=Path, metavar="FILE",
                   help="apply a plan lock (plan.lock.json of an earlier build): no search")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search from its last completed step")
    p.add_argument("--workers", type=_positive, default=1, metavar="N",
                   help="score a search's candidates on N Ray actors (default 1: in process)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="run those actors on the Ray cluster at ADDR (e.g. HOST:6379)")
    p.add_argument("--device", type=_device, metavar="DEVICE",
                   help="where torch work runs: auto, cpu, cuda or cuda:N (default: the "
                        "spec's model { device }, else auto = CUDA when present)")
    add_common(p)
    p.set_defaults(handler=cmd_build)


def _device(text: str) -> Any:
    from prunec.compiler.ir import Device

    device = Device.parse(text)
    if device is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, cpu, cuda or cuda:N")
    return device


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def cmd_build(args: argparse.Namespace) -> int:
    return with_signals(lambda: _build(args))


def _build(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prunec.runtime.build import BuildOptions, build
    from prunec.runtime.device import device_problem
    from prunec.runtime.report import render

    spec = load_spec_or_raise(args.spec)
    from prunec.passes.methods import distributed

    if distributed.wanted(args.workers, args.ray_address):
        distributed.require_ray()  # before the model loads
    problem = args.device and device_problem(args.device)
    if problem:
        print(f"prunec: error: --device: {problem}", file=sys.stderr)
        return EXIT_FAILED
    options = BuildOptions(args.output, args.quiet, args.lock, args.batch_size, args.resume,
                           args.workers, args.ray_address, device=args.device)
    result = build(spec, args.spec.parent, options)
    if args.json:
        print(json.dumps(result.report, indent=1))
    elif not args.quiet:
        render(result.report, Console())
    if result.passed:
        print(f"prunec: wrote {result.artifact}", file=sys.stderr)
        return 0
    _print_failed_gates(spec, result.report)
    print(f"prunec: a gate failed; nothing was published (report: {result.failed_report})",
          file=sys.stderr)
    return EXIT_FAILED


def _print_failed_gates(spec: Any, report: dict[str, Any]) -> None:
    from prunec.compiler.render import print_diagnostics

    diags = [Diagnostic.error("P0405", f"gate failed: {g['message']}", gate.span)
             for gate, g in zip(spec.gates, report["gates"]) if not g["held"]]
    print_diagnostics(diags)
