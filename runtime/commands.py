"""CLI commands of the runtime: ``build``, ``eval``, ``plan``, ``generate`` (and ``run``).

  prunec build SPEC [-o DIR] [-q] [--json] [--lock FILE] [--batch-size N]
      build the artifact (see ``prunec.runtime.build``); exit 0, or 1 when the spec has
      errors or a gate fails (nothing is published then), 130/143 on SIGINT/SIGTERM.
  prunec eval SPEC [--artifact DIR] [--dataset NAME ...]
      builds nothing: perplexity of the dense model (PyTorch) and, when DIR (default: the
      spec's output directory) holds an artifact, of the artifact (ONNX Runtime).
  prunec eval ARTIFACT_DIR --data FILE [--data FILE ...] [--format text|jsonl] [--field F]
                            [--samples N] [--seq-len L] [--seed S] [--slice A:B]
      perplexity of an artifact alone on any text, with the artifact's own tokenizer.
  prunec plan show SPEC [--json] [--lock FILE]
      the static plan the spec resolves to (manual plan or method), without exporting.
  prunec plan diff A B   (from ``prunec.runtime.plan_commands``) two plans side by side.
  prunec generate ARTIFACT_DIR PROMPT [--max-new-tokens N]
      greedy generation with a static artifact on ONNX Runtime (no KV cache: a quick look).
  prunec run ARTIFACT --data FILE   (``prunec.runtime.probe_commands``) a gated artifact on
      data, carrying the probe history H from batch to batch.
All take ``-q/--quiet`` (no progress bars) and ``--batch-size``. This module imports no torch
at import time: handlers import what they need.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span

EXIT_GATE = 1
EXIT_INT = 130
EXIT_TERM = 143


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (unwinds like KeyboardInterrupt)."""


def register(sub: Any) -> None:
    _register_build(sub)
    _register_eval(sub)
    _register_plan(sub)
    _register_generate(sub)
    try:  # ``prunec run ARTIFACT --data FILE``: gated artifacts, H carried across batches
        from prunec.runtime.probe_commands import register_probe_commands
    except ModuleNotFoundError:
        return
    register_probe_commands(sub)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--batch-size", type=int, default=4, metavar="N",
                   help="sequences per forward pass when evaluating (default 4)")


def _register_build(sub: Any) -> None:
    p = sub.add_parser("build", help="compile a .prune spec into a pruned ONNX artifact")
    p.add_argument("spec", type=Path, help="the .prune file")
    p.add_argument("-o", "--output", type=Path, metavar="DIR",
                   help="artifact directory (default: the spec's output, else build/<name>)")
    p.add_argument("--json", action="store_true", help="print report.json instead of tables")
    p.add_argument("--lock", type=Path, metavar="FILE",
                   help="apply a plan lock (plan.lock.json of an earlier build): no search")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted search from its last completed step")
    _common(p)
    p.set_defaults(handler=cmd_build)


def _register_eval(sub: Any) -> None:
    p = sub.add_parser("eval", help="perplexity of a spec's dense model and artifact, or of "
                       "an artifact on given text")
    p.add_argument("target", type=Path, help="a .prune spec, or an artifact directory")
    p.add_argument("--artifact", type=Path, metavar="DIR",
                   help="(spec) the artifact to compare with (default: the spec's output)")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME",
                   help="(spec) dataset to evaluate; repeatable (default: the spec's eval set)")
    p.add_argument("--data", action="append", default=[], metavar="FILE",
                   help="(artifact) text or JSONL file or glob; repeatable")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--field", default=None, help="JSONL text field (default: text)")
    p.add_argument("--samples", type=int, default=32, help="sequences (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slice", default=None, metavar="A:B",
                   help="fraction of the token stream, e.g. 0.8:1.0")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _common(p)
    p.set_defaults(handler=cmd_eval)


def _register_plan(sub: Any) -> None:
    plan = sub.add_parser("plan", help="static plans: show a spec's plan, diff two plans")
    plan_sub = plan.add_subparsers(dest="plan_command", metavar="SUBCOMMAND")
    p = plan_sub.add_parser("show", help="resolve and show a spec's static plan (no export)")
    p.add_argument("spec", type=Path)
    p.add_argument("--json", action="store_true", help="print plan.json")
    p.add_argument("--lock", type=Path, metavar="FILE", help="apply this plan lock")
    _common(p)
    p.set_defaults(handler=cmd_plan)
    try:
        from prunec.runtime.plan_commands import add_diff_parser
    except ModuleNotFoundError:
        pass
    else:
        add_diff_parser(plan_sub)
    plan.set_defaults(handler=lambda args: _usage(plan))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _register_generate(sub: Any) -> None:
    p = sub.add_parser("generate", help="generate text with a static artifact (greedy, ONNX "
                       "Runtime)")
    p.add_argument("artifact", type=Path)
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(handler=cmd_generate)


# ------------------------------------------------------------------- helpers


def load_spec_or_raise(path: Path) -> Any:
    """The spec at ``path``; warnings printed; CompileError on errors."""
    from prunec.compiler.driver import load_spec
    from prunec.compiler.render import print_diagnostics

    spec, diags = load_spec(path)
    if spec is None or any(d.is_error for d in diags):
        raise CompileError(tuple(diags))
    if diags:
        print_diagnostics(diags)
    return spec


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def with_signals(fn: Any) -> Any:
    """Run ``fn()`` turning SIGINT/SIGTERM into exit 130/143 with a message."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        return fn()
    except KeyboardInterrupt:
        print("prunec: interrupted; nothing was published", file=sys.stderr)
        return EXIT_INT
    except Terminated:
        print("prunec: terminated; nothing was published", file=sys.stderr)
        return EXIT_TERM
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- build


def cmd_build(args: argparse.Namespace) -> int:
    return int(with_signals(lambda: _build(args)))


def _build(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prunec.runtime import build as driver
    from prunec.runtime.report import render

    spec = load_spec_or_raise(args.spec)
    options = driver.BuildOptions(args.output, args.quiet, args.lock, args.batch_size,
                                  args.resume)
    result = driver.build(spec, args.spec.parent, options, driver.graph_compile)
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
    return EXIT_GATE


def _print_failed_gates(spec: Any, report: dict[str, Any]) -> None:
    from prunec.compiler.render import print_diagnostics

    diags = [Diagnostic.error("P0405", f"gate failed: {g['message']}", gate.span)
             for gate, g in zip(spec.gates, report["gates"]) if not g["held"]]
    print_diagnostics(diags)


# ----------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    return int(with_signals(lambda: _eval(args)))


def _eval(args: argparse.Namespace) -> int:
    if args.target.is_dir():
        results = _eval_artifact(args)
    else:
        results = _eval_spec(args)
    data = {"perplexity": {r.name: r.to_json() for r in results}}
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        from rich.console import Console

        from prunec.runtime.report import render_perplexity

        render_perplexity(data, Console())
    return 0


def _eval_spec(args: argparse.Namespace) -> list[Any]:
    from prunec.runtime.build import onnx_settings, output_dir
    from prunec.runtime.data import load_dataset
    from prunec.runtime.evaluate import make_progress, perplexity, torch_logits
    from prunec.runtime.models import load_model
    from prunec.runtime.report import DatasetResult

    spec = load_spec_or_raise(args.target)
    spec_dir = args.target.parent
    names = tuple(args.dataset) or spec.eval_datasets()
    _check_names(spec, names)
    loaded = load_model(spec.model, spec_dir)
    artifact = args.artifact or output_dir(spec, spec_dir, None)
    onnx_path = artifact / onnx_settings(spec).file
    runner = _runner_if_built(artifact, onnx_path, onnx_settings(spec).providers)
    results = []
    with make_progress(args.quiet) as progress:
        for n in names:
            data = load_dataset(spec.dataset(n), spec_dir, loaded.tokenizer)
            dense = perplexity(torch_logits(loaded.model), data, args.batch_size, progress,
                               f"dense perplexity on {n}")
            pruned = _onnx_ppl(runner, data, args, progress, n) if runner else None
            results.append(DatasetResult(n, int(data.shape[0]), int(data.shape[1]), dense,
                                         pruned))
    return results


def _check_names(spec: Any, names: tuple[str, ...]) -> None:
    known = {d.name for d in spec.datasets}
    bad = [n for n in names if n not in known]
    if bad:
        raise CompileError((Diagnostic.error(
            "P0201", f"unknown dataset {bad[0]!r}; the spec declares "
            f"{', '.join(sorted(known)) or 'none'}", Span.unknown(spec.file)),))


def _runner_if_built(artifact: Path, onnx_path: Path, providers: Any) -> Any:
    from prunec.runtime.build import artifact_runner

    if not onnx_path.is_file():
        print(f"prunec: no artifact at {artifact}; evaluating the dense model only",
              file=sys.stderr)
        return None
    return artifact_runner(onnx_path, providers)


def _onnx_ppl(runner: Any, data: Any, args: argparse.Namespace, progress: Any,
              name: str) -> Any:
    """Perplexity with an ``artifact_runner``; a gated artifact starts from its initial H."""
    from prunec.runtime.evaluate import perplexity

    _, logits_fn, reset = runner
    if reset is not None:
        reset()
    return perplexity(logits_fn, data, args.batch_size, progress,
                      f"pruned perplexity on {name}")


def _eval_artifact(args: argparse.Namespace) -> list[Any]:
    from prunec.compiler.ir import Provider
    from prunec.runtime.build import artifact_runner
    from prunec.runtime.data import load_dataset
    from prunec.runtime.evaluate import make_progress
    from prunec.runtime.report import DatasetResult

    where = Span.unknown("<command line>")
    if not args.data:
        raise CompileError((Diagnostic.error(
            "P0403", "evaluating an artifact directory needs --data FILE", where),))
    onnx_path = artifact_onnx(args.target)
    decl = data_decl(args, where)
    tokenizer = artifact_tokenizer(args.target)
    data = load_dataset(decl, Path.cwd(), tokenizer)
    runner = artifact_runner(onnx_path, (Provider.CUDA, Provider.CPU))
    with make_progress(args.quiet) as progress:
        pruned = _onnx_ppl(runner, data, args, progress, "data")
    return [DatasetResult("data", int(data.shape[0]), int(data.shape[1]), None, pruned)]


def artifact_onnx(directory: Path) -> Path:
    """The artifact's ONNX file (the one report.json's spec names, else the only *.onnx)."""
    found = sorted(directory.glob("*.onnx"))
    if len(found) != 1:
        raise CompileError((Diagnostic.error(
            "P0404", f"{directory} holds {len(found)} .onnx files; expected one prunec "
            "artifact", Span.unknown(str(directory))),))
    return found[0]


def artifact_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise CompileError((Diagnostic.error(
            "P0404", f"no usable tokenizer in {directory}: {exc}",
            Span.unknown(str(directory))),)) from exc


def data_decl(args: argparse.Namespace, where: Span) -> Any:
    from prunec.compiler.ir import DataFormat, DatasetDecl, SliceRange

    cut = None
    if args.slice:
        try:
            a, b = (float(x) for x in args.slice.split(":"))
        except ValueError as exc:
            raise CompileError((Diagnostic.error(
                "P0403", f"--slice {args.slice!r} is not A:B", where),)) from exc
        if not 0 <= a < b <= 1:
            raise CompileError((Diagnostic.error(
                "P0403", "--slice needs 0 <= A < B <= 1", where),))
        cut = SliceRange(a, b, where)
    return DatasetDecl("data", DataFormat(args.format), tuple(args.data), args.field,
                       args.samples, args.seq_len, args.seed, cut, where)


# ------------------------------------------------------------- plan, generate


def cmd_plan(args: argparse.Namespace) -> int:
    return int(with_signals(lambda: _plan(args)))


def _plan(args: argparse.Namespace) -> int:
    from rich.console import Console

    from prunec.runtime.build import (
        BuildContext,
        BuildOptions,
        graph_compile,
        load_data,
        make_plan,
        output_dir,
    )
    from prunec.runtime.evaluate import make_progress
    from prunec.runtime.models import load_model
    from prunec.runtime.report import render_plan

    spec = load_spec_or_raise(args.spec)
    loaded = load_model(spec.model, args.spec.parent)
    options = BuildOptions(None, args.quiet, args.lock, args.batch_size)
    with make_progress(args.quiet) as progress:
        data = load_data(spec, args.spec.parent, loaded.tokenizer)
        ctx = BuildContext(spec, args.spec.parent, options, progress, graph_compile,
                           output_dir(spec, args.spec.parent, None))
        plan, _ = make_plan(spec, loaded, data, ctx)
    if args.json:
        print(plan.dumps())
    else:
        render_plan(plan, loaded.shape, Console())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from prunec.runtime.session import open_session

    tokenizer = artifact_tokenizer(args.artifact)
    session = open_session(artifact_onnx(args.artifact)).session
    ids = list(tokenizer(args.prompt, add_special_tokens=False)["input_ids"])
    start = len(ids)
    for _ in range(args.max_new_tokens):
        logits = session.run(["logits"], {"input_ids": np.asarray([ids], dtype=np.int64)})[0]
        nxt = int(logits[0, -1].argmax())
        ids.append(nxt)
        if nxt == tokenizer.eos_token_id:
            break
    print(args.prompt + tokenizer.decode(ids[start:], skip_special_tokens=True))
    return 0
