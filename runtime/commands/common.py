"""What several commands share: loading a spec, SIGINT/SIGTERM handling, finding an
artifact's ONNX file and tokenizer, the ``--data`` options, the common build options.

Exit codes: ``EXIT_FAILED`` (1) for a failed gate, ``EXIT_INT`` (130) on SIGINT,
``EXIT_TERM`` (143) on SIGTERM; user errors are ``CompileError`` (rendered by the CLI, exit 1).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, user_error

EXIT_FAILED = 1
EXIT_INT = 130
EXIT_TERM = 143
RAW = argparse.RawDescriptionHelpFormatter


class Terminated(BaseException):
    """Raised in the main thread by the SIGTERM handler (unwinds like KeyboardInterrupt)."""


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or tables")
    p.add_argument("--batch-size", type=int, default=4, metavar="N",
                   help="sequences per forward pass when evaluating (default 4)")


def add_data_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    """``--data`` and how to read it (``prunec.runtime.data.DataArgs``)."""
    p.add_argument("--data", action="append", default=[], metavar="FILE", required=required,
                   help="text or JSONL file or glob (repeatable), or a .npy of token ids")
    p.add_argument("--format", choices=("text", "jsonl"), default="text")
    p.add_argument("--field", default=None, help="JSONL text field (default: text)")
    p.add_argument("--samples", type=int, default=32, help="sequences (default 32)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per sequence (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slice", default=None, metavar="A:B",
                   help="fraction of the token stream, e.g. 0.8:1.0")


def data_args(args: argparse.Namespace) -> Any:
    from prunec.runtime.data import DataArgs

    return DataArgs(tuple(args.data), args.format, args.field, args.samples, args.seq_len,
                    args.seed, args.slice)


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


def with_signals(fn: Callable[[], int]) -> int:
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


def artifact_onnx(directory: Path) -> Path:
    """The artifact's ONNX file (its only *.onnx but the sidecar graphs of another, such as
    a prompt-mode artifact's ``model.gather.onnx``; P0404 otherwise)."""
    from prunec.compiler.names import onnx_sidecars

    every = sorted(directory.glob("*.onnx"))
    sidecars = {s for p in every for s in onnx_sidecars(p.name)}
    found = [p for p in every if p.name not in sidecars]
    if len(found) != 1:
        raise user_error("P0404", f"{directory} holds {len(found)} .onnx files; expected one "
                         "prunec artifact", str(directory))
    return found[0]


def artifact_tokenizer(directory: Path) -> Any:
    """The tokenizer saved in an artifact directory (P0404 when there is none)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise user_error("P0404", f"no usable tokenizer in {directory}: {exc}",
                         str(directory)) from exc


def check_history_covers(manifest: dict[str, Any], seq_len: int, where: str) -> None:
    """P0403 unless a gated artifact's history covers sequences of ``seq_len`` tokens."""
    from prunec.compiler.ir import MIN_SEQ

    max_len = int(manifest["max_len"])
    if not MIN_SEQ <= seq_len <= max_len:
        raise user_error("P0403", f"sequences of {seq_len} tokens (--seq-len for text data) "
                         f"are outside [{MIN_SEQ}, {max_len}], the lengths this artifact's "
                         "history covers", where)
