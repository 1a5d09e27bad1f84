"""``prunec eval``: perplexity, building nothing.

  prunec eval SPEC [--artifact DIR] [--dataset NAME ...]
      the dense model (PyTorch) and, when DIR (default: the spec's output directory,
      ``compiler.outputs.output_dir``) holds an artifact, the artifact (ONNX Runtime).
  prunec eval ARTIFACT_DIR --data FILE [--data FILE ...] [--format text|jsonl] [--field F]
                            [--samples N] [--seq-len L] [--seed S] [--slice A:B]
      an artifact alone on any text, with the artifact's own tokenizer, read by
      ``runtime.data.load_data_args`` (the loader ``prunec run --data`` uses too).
  --prompt-len P (either form): continuation perplexity, of tokens P .. L-1 given 0 .. P-1
      (``runtime.evaluate.perplexity``), the same positions for every artifact kind; P must
      be in [``min_prompt_len``, L-1] (P0403 otherwise).
A gated artifact starts each dataset from its shipped initial H.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span, user_error
from prunec.runtime.commands.common import (
    add_common,
    add_data_args,
    artifact_onnx,
    artifact_tokenizer,
    check_history_covers,
    data_args,
    load_spec_or_raise,
    with_signals,
)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", help="perplexity of a spec's dense model and artifact, "
                              "or of an artifact on given text")
    p.add_argument("target", type=Path, help="a .prune spec, or an artifact directory")
    p.add_argument("--artifact", type=Path, metavar="DIR",
                   help="(spec) the artifact to compare with (default: the spec's output)")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME",
                   help="(spec) dataset to evaluate; repeatable (default: the spec's eval set)")
    add_data_args(p)
    p.add_argument("--prompt-len", type=int, default=None, metavar="P",
                   help="score only tokens P.. given the first P (continuation perplexity)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_common(p)
    p.set_defaults(handler=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    return with_signals(lambda: _eval(args))


def _eval(args: argparse.Namespace) -> int:
    results = _eval_artifact(args) if args.target.is_dir() else _eval_spec(args)
    data: dict[str, Any] = {"perplexity": {r.name: r.to_json() for r in results}}
    if args.prompt_len is not None:
        data["prompt_len"] = args.prompt_len
    if args.json:
        print(json.dumps(data, indent=1))
    else:
        from rich.console import Console

        from prunec.runtime.report import render_perplexity

        render_perplexity(data, Console())
    return 0


def _eval_spec(args: argparse.Namespace) -> list[Any]:
    from prunec.compiler.outputs import output_dir
    from prunec.runtime.data import load_dataset
    from prunec.runtime.evaluate import make_progress, perplexity, torch_logits
    from prunec.runtime.gated import min_prompt_len_of
    from prunec.runtime.models import load_model
    from prunec.runtime.report import DatasetResult

    spec = load_spec_or_raise(args.target)
    spec_dir = args.target.parent
    names = tuple(args.dataset) or spec.eval_datasets()
    _check_names(spec, names)
    loaded = load_model(spec.model, spec_dir)
    runner = _runner_if_built(spec, args.artifact or output_dir(spec, spec_dir), args.prompt_len)
    least = min_prompt_len_of(spec.probe.mode.value if spec.probe is not None else None)
    results = []
    with make_progress(args.quiet) as progress:
        for n in names:
            data = load_dataset(spec.dataset(n), spec_dir, loaded.tokenizer)
            check_prompt_len(args.prompt_len, int(data.shape[1]), least, str(args.target))
            dense = perplexity(torch_logits(loaded.model), data, args.batch_size, progress,
                               f"dense perplexity on {n}", args.prompt_len or 0)
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


def _runner_if_built(spec: Any, artifact: Path, prompt_len: int | None) -> Any:
    from prunec.runtime.session import artifact_runner

    export = spec.onnx_export()
    onnx_path = artifact / export.file if export is not None else artifact / "-"
    if not onnx_path.is_file():
        print(f"prunec: no artifact at {artifact}; evaluating the dense model only",
              file=sys.stderr)
        return None
    return artifact_runner(onnx_path, export.providers, prompt_len)


def _onnx_ppl(runner: Any, data: Any, args: argparse.Namespace, progress: Any,
              name: str) -> Any:
    """Perplexity with an ``artifact_runner``; a gated artifact starts from its initial H."""
    from prunec.runtime.evaluate import perplexity

    _, logits_fn, reset = runner
    if reset is not None:
        reset()
    return perplexity(logits_fn, data, args.batch_size, progress,
                      f"pruned perplexity on {name}", args.prompt_len or 0)


def check_prompt_len(prompt_len: int | None, seq_len: int, least: int, where: str) -> None:
    """P0403 unless ``--prompt-len`` is absent or in ``[least, seq_len - 1]``: a prompt the
    artifact can score from, followed by at least one token to predict."""
    if prompt_len is None or least <= prompt_len < seq_len:
        return
    raise user_error("P0403", f"--prompt-len {prompt_len} is outside [{least}, {seq_len - 1}]: "
                     f"the prompt needs at least {least} token(s) and sequences of {seq_len} "
                     "tokens (--seq-len) must leave one to predict", where)


def _eval_artifact(args: argparse.Namespace) -> list[Any]:
    from prunec.compiler.ir import Provider
    from prunec.runtime.data import load_data_args
    from prunec.runtime.evaluate import make_progress
    from prunec.runtime.gated import min_prompt_len
    from prunec.runtime.report import DatasetResult
    from prunec.runtime.session import artifact_runner

    if not args.data:
        raise user_error("P0403", "evaluating an artifact directory needs --data FILE",
                         "<command line>")
    onnx_path = artifact_onnx(args.target)
    data = load_data_args(data_args(args), lambda: artifact_tokenizer(args.target))
    manifest = onnx_path.with_suffix(".gating.json")
    gating = json.loads(manifest.read_text()) if manifest.is_file() else None
    if gating is not None:
        check_history_covers(gating, int(data.shape[1]), args.data[0])
    check_prompt_len(args.prompt_len, int(data.shape[1]), min_prompt_len(gating),
                     "<command line>")
    runner = artifact_runner(onnx_path, (Provider.CUDA, Provider.CPU), args.prompt_len)
    with make_progress(args.quiet) as progress:
        pruned = _onnx_ppl(runner, data, args, progress, "data")
    return [DatasetResult("data", int(data.shape[0]), int(data.shape[1]), None, pruned)]
