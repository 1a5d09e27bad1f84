"""``prunec run ARTIFACT --data FILE``: run a gated ONNX artifact batch after batch.

Registers the command on an argparse subparsers object (``register_probe_commands``); no
torch or onnxruntime import at import time. The artifact is a directory holding a
``*.gating.json`` manifest (or the manifest / .onnx itself). ``--data`` is either a ``.npy``
of int token ids ``[sequences, seq_len]`` or a text file, tokenised with the tokenizer saved
in the artifact directory (or ``--tokenizer DIR``) and cut into contiguous ``--seq-len``
chunks. Batches run in file order with H carried across them; the command prints the
perplexity (prunec.runtime.evaluate's definition) and the execution provider used.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def register_probe_commands(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run a gated ONNX artifact on data (carries H)",
                              description=__doc__.splitlines()[0])
    p.add_argument("artifact", help="artifact directory, its .onnx or its .gating.json")
    p.add_argument("--data", required=True, help=".npy token ids or a text file")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--samples", type=int, default=None, help="at most this many sequences")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory for text data")
    p.set_defaults(handler=run_command)


def load_tokens(data: Path, seq_len: int, tokenizer_dir: Path) -> Any:
    """``[sequences, seq_len]`` int64 token ids from a .npy or a text file."""
    import numpy as np

    if data.suffix == ".npy":
        return np.asarray(np.load(data), dtype=np.int64)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    ids = np.asarray(tokenizer(data.read_text(), add_special_tokens=False)["input_ids"],
                     dtype=np.int64)
    n = len(ids) // seq_len
    if n == 0:
        raise ValueError(f"{data} has fewer than {seq_len} tokens")
    return ids[:n * seq_len].reshape(n, seq_len)


def _user_error(code: str, message: str, where: str) -> CompileError:
    return CompileError((Diagnostic.error(code, message, Span.unknown(where)),))


def run_command(args: argparse.Namespace) -> int:
    """Bad input (no manifest, a missing or too short data file, sequences longer than the
    artifact's H) is a diagnostic with exit 1, not an internal error."""
    import torch

    from prunec.runtime.evaluate import perplexity
    from prunec.runtime.gated import MIN_SEQ, GatedSession, find_manifest

    try:
        manifest = find_manifest(args.artifact)
    except FileNotFoundError as exc:
        raise _user_error("P0404", f"{exc}: not a gated artifact", args.artifact) from exc
    if not manifest.is_file():
        raise _user_error("P0404", f"{manifest} does not exist", args.artifact)
    data = Path(args.data)
    if not data.is_file():
        raise _user_error("P0302", f"data file {data} does not exist", args.data)
    session = GatedSession(manifest, providers=PROVIDERS[args.provider])
    tok_dir = Path(args.tokenizer) if args.tokenizer else manifest.parent
    try:
        tokens = load_tokens(data, args.seq_len, tok_dir)[:args.samples]
    except ValueError as exc:
        raise _user_error("P0402", str(exc), args.data) from exc
    max_len = int(session.manifest["max_len"])
    if not MIN_SEQ <= tokens.shape[1] <= max_len:
        raise _user_error("P0403", f"sequences of {tokens.shape[1]} tokens (--seq-len for text "
                          f"data) are outside [{MIN_SEQ}, {max_len}], the lengths this "
                          "artifact's history covers", args.data)

    def logits(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(batch.numpy()))

    result = perplexity(logits, torch.from_numpy(tokens), args.batch)
    print(f"perplexity {result.ppl:.4f} on {result.sequences} sequences x {tokens.shape[1]} "
          f"tokens ({result.seconds:.1f}s)")
    print(f"provider {session.provider}; H carried across "
          f"{-(-result.sequences // args.batch)} batches")
    return 0
