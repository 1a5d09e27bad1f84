"""``prunec generate ARTIFACT_DIR PROMPT [--max-new-tokens N]``: greedy generation with a
static artifact on ONNX Runtime (no KV cache: a quick look, not a server)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prunec.runtime.commands.common import artifact_onnx, artifact_tokenizer


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="generate text with a static artifact (greedy, "
                              "ONNX Runtime)")
    p.add_argument("artifact", type=Path)
    p.add_argument("prompt")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.set_defaults(handler=cmd_generate)


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
