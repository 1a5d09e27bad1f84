"""``prunec generate ARTIFACT (PROMPT | --prompt-file F) [--max-new-tokens N]
[--temperature T] [--top-p P] [--seed S] [--chat] [--json]``: generate text with a static
KV-cache artifact (``prunec.runtime.generate``), streaming it to the terminal.

Out-of-range numbers (``--max-new-tokens`` < 1, ``--temperature`` < 0, ``--top-p`` outside
(0, 1]; ``SamplingConfig.problem`` is the one home of those rules) are usage errors (exit
2); a missing artifact, tokenizer or cache, an unreadable prompt file, an empty prompt and
one that fills the context are diagnostics (exit 1). ``--json`` prints one object (token ids, text, time to first token, decode
tokens/s) instead of streaming.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import user_error
from prunec.runtime.commands.common import artifact_onnx, artifact_tokenizer


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("generate", help="generate text with a static or prompt-mode "
                              "artifact and its KV cache (ONNX Runtime), streamed to the terminal")
    p.add_argument("artifact", type=Path)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("prompt", nargs="?")
    source.add_argument("--prompt-file", type=Path, metavar="F", help="read the prompt from F")
    p.add_argument("--max-new-tokens", type=int, metavar="N",
                   help="at most N new tokens (default: SamplingConfig's, 128)")
    p.add_argument("--temperature", type=float, metavar="T", help="0 (the default) is greedy")
    p.add_argument("--top-p", type=float, metavar="P",
                   help="nucleus sampling mass in (0, 1] (default 1: no cut)")
    p.add_argument("--seed", type=int, help="sampling seed (default 0)")
    p.add_argument("--chat", action="store_true",
                   help="wrap the prompt as a user turn with the tokenizer's chat template")
    p.add_argument("--json", action="store_true",
                   help="print token ids, text and timings as JSON instead of streaming")
    p.set_defaults(handler=cmd_generate, usage_error=p.error)


def read_prompt(args: argparse.Namespace) -> str:
    """PROMPT, or the prompt file's text without its final newline (P0302 if unreadable)."""
    if args.prompt_file is None:
        return str(args.prompt)
    try:
        return str(args.prompt_file.read_text(encoding="utf-8")).removesuffix("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise user_error("P0302", f"cannot read the prompt file: {exc}",
                         str(args.prompt_file)) from exc


def sampling(args: argparse.Namespace) -> Any:
    """The SamplingConfig of the flags given (its defaults for the rest); a usage error
    (exit 2) for an out-of-range value."""
    from prunec.runtime.generate import SamplingConfig

    given = {k: getattr(args, k) for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    config = SamplingConfig(**{k: v for k, v in given.items() if v is not None})
    if (bad := config.problem()) is not None:
        args.usage_error(f"argument --{bad[0].replace('_', '-')}: {bad[1]}")  # exits 2
    return config


def cmd_generate(args: argparse.Namespace) -> int:
    from prunec.runtime.generate import Generator, generate_text

    config = sampling(args)
    if not args.artifact.is_dir():
        raise user_error("P0404", f"artifact directory {args.artifact} does not exist",
                         str(args.artifact))
    prompt = read_prompt(args)
    tokenizer = artifact_tokenizer(args.artifact)
    generator = Generator(artifact_onnx(args.artifact))
    printed: list[str] = []

    def show(row: int, text: str) -> None:
        if not printed:  # the first text: the prompt passed every check
            print(prompt, end="")
        printed.append(text)
        print(text, end="", flush=True)

    result = generate_text(generator, tokenizer, [prompt], config,
                           None if args.json else show, chat=args.chat)
    if args.json:
        print(json.dumps({"tokens": list(result.tokens[0]), "text": result.texts[0],
                          "time_to_first_token_s": result.time_to_first_token_s,
                          "decode_tokens_per_s": result.decode_tokens_per_s}))
        return 0
    print("" if printed else prompt)
    print(f"[{len(result.tokens[0])} tokens; first after "
          f"{result.time_to_first_token_s * 1000:.0f} ms; "
          f"{result.decode_tokens_per_s:.1f} tokens/s]", file=sys.stderr)
    return 0
