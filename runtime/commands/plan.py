"""``prunec plan show SPEC`` and ``prunec plan diff A B``: static plans.

``show`` resolves the spec's static plan (manual plan or method, ``runtime.planning``)
without exporting anything and without touching any build state (no search state is read,
written or deleted). ``diff`` shows two plans side by side, one row per layer; A and B are
plan files (``Plan.to_json``: plan.json), plan locks (plan.lock.json, the plan under
``"plan"``) or artifact directories holding either (the lock is preferred); exit 0 when
the plans agree, 1 when they differ or a file cannot be read (P0704).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.plan import LayerPlan, Plan
from prunec.runtime.commands.common import add_common, load_spec_or_raise, with_signals

PLAN_FILES = ("plan.lock.json", "plan.json")


def register(subparsers: Any) -> None:
    plan = subparsers.add_parser("plan", help="static plans: show a spec's plan, diff two plans")
    plan_sub = plan.add_subparsers(dest="plan_command", metavar="SUBCOMMAND")
    p = plan_sub.add_parser("show", help="resolve and show a spec's static plan (no export)")
    p.add_argument("spec", type=Path)
    p.add_argument("--json", action="store_true", help="print plan.json")
    p.add_argument("--lock", type=Path, metavar="FILE", help="apply this plan lock")
    add_common(p)
    p.set_defaults(handler=cmd_show)
    diff = plan_sub.add_parser("diff", help="show two plans side by side")
    diff.add_argument("a", help="plan.json, plan.lock.json or an artifact directory")
    diff.add_argument("b", help="plan.json, plan.lock.json or an artifact directory")
    diff.add_argument("--all", action="store_true", help="show layers that agree too")
    diff.set_defaults(handler=run_diff)
    plan.set_defaults(handler=lambda args: _usage(plan))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# ------------------------------------------------------------------------ show


def cmd_show(args: argparse.Namespace) -> int:
    return with_signals(lambda: _show(args))


def _show(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prunec.runtime.data import load_spec_data
    from prunec.runtime.evaluate import make_progress
    from prunec.runtime.models import load_model
    from prunec.runtime.planning import PlanOptions, make_plan
    from prunec.runtime.report import render_plan

    spec = load_spec_or_raise(args.spec)
    loaded = load_model(spec.model, args.spec.parent)
    with make_progress(args.quiet) as progress:
        data = load_spec_data(spec, args.spec.parent, loaded.tokenizer)
        options = PlanOptions(progress, args.lock, args.batch_size, state=None)
        plan, _ = make_plan(spec, loaded, data, options)
    if args.json:
        print(plan.dumps())
    else:
        render_plan(plan, loaded.shape, Console())
    return 0


# ------------------------------------------------------------------------ diff


def load_plan(path: str | Path) -> Plan:
    """The plan in a plan file, a lock, or an artifact directory (CompileError P0704)."""
    p = Path(path)
    if p.is_dir():
        p = next((p / n for n in PLAN_FILES if (p / n).is_file()), p / PLAN_FILES[0])
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        return Plan.from_json(data.get("plan", data))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CompileError((Diagnostic.error(
            "P0704", f"cannot read a plan from {path}: {exc}", Span.unknown(str(p)),
            hint="give a plan.json, a plan.lock.json or an artifact directory"),)) from None


def describe_layer(lp: LayerPlan | None) -> tuple[str, str]:
    """(attention, MLP) cells: 'removed', 'all', or the kept count."""
    if lp is None:
        return ("-", "-")
    attn = "removed" if lp.attn_removed else (
        "all" if lp.kept_heads is None else f"{len(lp.kept_heads)} heads")
    mlp = "removed" if lp.mlp_removed else (
        "all" if lp.kept_channels is None else f"{len(lp.kept_channels)} ch")
    return attn, mlp


def diff_rows(a: Plan, b: Plan) -> list[tuple[int, str, str, str, str, bool]]:
    """Per layer: (index, A attn, A mlp, B attn, B mlp, same)."""
    rows = []
    for i in range(max(len(a.layers), len(b.layers))):
        la = a.layers[i] if i < len(a.layers) else None
        lb = b.layers[i] if i < len(b.layers) else None
        rows.append((i, *describe_layer(la), *describe_layer(lb), la == lb))
    return rows


def run_diff(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    a, b = load_plan(args.a), load_plan(args.b)
    rows = diff_rows(a, b)
    table = Table(title=f"A = {args.a} ({a.method})   B = {args.b} ({b.method})")
    for col in ("layer", "A attn", "A mlp", "B attn", "B mlp", ""):
        table.add_column(col, justify="right" if col == "layer" else "left")
    for i, aa, am, ba, bm, same in rows:
        if same and not args.all:
            continue
        table.add_row(str(i), aa, am, ba, bm, "" if same else "[bold red]differs[/]",
                      style=None if same else "yellow")
    console = Console()
    console.print(table)
    changed = sum(not r[-1] for r in rows)
    console.print(f"{changed} of {len(rows)} layers differ; decisions: A {len(a.decisions)}, "
                  f"B {len(b.decisions)}")
    return 0 if changed == 0 else 1
