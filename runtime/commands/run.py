"""``prunec run ARTIFACT --data FILE``: run a gated ONNX artifact batch after batch.

The artifact is a directory holding a ``*.gating.json`` manifest (or the manifest / .onnx
itself). ``--data`` is read by ``runtime.data.load_data_args``, the loader ``prunec eval
--data`` uses: a ``.npy`` of int token ids ``[sequences, seq_len]``, or text / JSONL
tokenised with the tokenizer saved in the artifact directory (or ``--tokenizer DIR``) and
sampled like a spec's dataset (``--samples``, ``--seq-len``, ``--seed``, ``--slice``).
Batches run in order with H carried across them; the command prints the perplexity
(prunec.runtime.evaluate's definition) and the execution provider used. Bad input (no
manifest, a missing or too short data file, sequences the artifact's H does not cover) is a
diagnostic with exit 1, not an internal error.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import user_error
from prunec.runtime.commands.common import (
    add_data_args,
    artifact_tokenizer,
    check_history_covers,
    data_args,
)

PROVIDERS = {"cpu": ["CPUExecutionProvider"],
             "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("run", help="run a gated ONNX artifact on data (carries H)",
                              description=(__doc__ or "").splitlines()[0])
    p.add_argument("artifact", help="artifact directory, its .onnx or its .gating.json")
    add_data_args(p, required=True)
    p.add_argument("--batch", type=int, default=4, help="sequences per call (default 4)")
    p.add_argument("--provider", choices=sorted(PROVIDERS), default="cpu")
    p.add_argument("--tokenizer", default=None, help="tokenizer directory for text data")
    p.set_defaults(handler=run_command)


def find_gated_manifest(artifact: str) -> Path:
    """The artifact's ``*.gating.json`` (P0404 when it has none)."""
    from prunec.runtime.gated import find_manifest

    try:
        manifest = find_manifest(artifact)
    except FileNotFoundError as exc:
        raise user_error("P0404", f"{exc}: not a gated artifact", artifact) from exc
    if not manifest.is_file():
        raise user_error("P0404", f"{manifest} does not exist", artifact)
    return manifest


def run_command(args: argparse.Namespace) -> int:
    import torch

    from prunec.runtime.data import load_data_args
    from prunec.runtime.evaluate import perplexity
    from prunec.runtime.gated import GatedSession

    manifest = find_gated_manifest(args.artifact)
    meta = json.loads(manifest.read_text())
    what = data_args(args)
    if not what.token_ids:  # before tokenising: text cut to --seq-len
        check_history_covers(meta, what.seq_len, args.data[0])
    tok_dir = Path(args.tokenizer) if args.tokenizer else manifest.parent
    tokens = load_data_args(what, lambda: artifact_tokenizer(tok_dir))
    check_history_covers(meta, int(tokens.shape[1]), args.data[0])
    session = GatedSession(manifest, providers=PROVIDERS[args.provider])

    def logits(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(batch.numpy()))

    result = perplexity(logits, tokens, args.batch)
    print(f"perplexity {result.ppl:.4f} on {result.sequences} sequences x {tokens.shape[1]} "
          f"tokens ({result.seconds:.1f}s)")
    print(f"provider {session.provider}; H carried across "
          f"{-(-result.sequences // args.batch)} batches")
    return 0
