"""Continuation perplexity of prompt-conditioned Probe Pruning (``probe { mode = prompt }``)
against static baselines on SmolLM2-135M-Instruct, in two protocols.

For a prompt of P tokens and a continuation of N (``--settings P:N,...``; default 128:128
and 256:256), the perplexity of tokens P .. P+N-1 given 0 .. P-1 (``runtime.evaluate.
perplexity(prompt_len=P)``) of:
- ``dense``;
- ``prompt`` / ``prompt-compensate``: per sequence, kept sets scored once from the prompt
  (PPsp fused with the calibrated H), prefill dense, the continuation on the kept units
  (``passes.probe.PromptRunner``, the PyTorch reference);
- ``prompt-batch`` / ``prompt-batch-compensate``: ``kept = per-batch``, ``samples = 100%``:
  one kept set per evaluation batch (``--batch`` unrelated windows), probed on all their
  prompts, as a server batching requests would run it;
- ``full-batch`` / ``full-batch-compensate``: the same but scored on the whole sequence, the
  continuation included (an oracle-ish control no deployment can run);
- ``flap`` / ``wanda-sp``: static kept sets from the calibration text at the same per-layer
  counts of MLP channels and heads (``bench/probe_quality.py``'s baselines; FLAP with its
  bias compensation), pruning the prompt too, as a static artifact does;
at every ratio of ``--ratios`` (model-wide, first 3 layers skipped, MLP counts rounded to
64). Protocols: ``in-domain`` (calibrate on specs/data/kjv-calib.txt, evaluate on
specs/data/kjv-eval.txt) and ``out-of-domain`` (the same calibration, evaluate on
specs/data/licenses.txt). Quality numbers do not depend on the machine's load; the JSON
records it anyway (bench/machine.py) and is rewritten after every row.

Usage: nice -n 10 python bench/prompt_gating.py [--samples 6] [--calib 32] [--threads 1]
       [--settings 128:128,256:256] [--ratios 0.2,0.4,0.5] [--methods M,..]
       [--protocols in-domain,out-of-domain] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine
from probe_quality import dataset, demo_model, policy

from prunec.compiler.ir import KeptScope, ProbeMetric, ProbeMode
from prunec.passes.probe import ProbeRunner, PromptRunner, calibrate_history
from prunec.runtime.data import load_dataset
from prunec.runtime.evaluate import perplexity, torch_logits

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = {"in-domain": "kjv-eval.txt", "out-of-domain": "licenses.txt"}
METHODS = ("prompt", "prompt-compensate", "prompt-batch", "prompt-batch-compensate",
           "full-batch", "full-batch-compensate", "flap", "wanda-sp")
DEFAULT_METHODS = ("prompt,prompt-compensate,prompt-batch-compensate,full-batch-compensate,"
                   "flap,wanda-sp")
STATIC = {"flap": ProbeMetric.FLAP, "wanda-sp": ProbeMetric.WANDA_SP}


def logits_fn(name: str, ratio: float, ctx: dict[str, Any], prompt_len: int) -> Any:
    """The (batch -> logits) function of one method at one ratio."""
    model, shape, history = ctx["model"], ctx["shape"], ctx["history"]
    if name == "dense":
        return torch_logits(model)
    if name in STATIC:
        return ProbeRunner(model, shape, policy(ratio, ProbeMode.PROBE, STATIC[name]),
                           history).run
    pol = policy(ratio, ProbeMode.PROMPT, ProbeMetric.PPSP,
                 compensate=name.endswith("-compensate"))
    if name.startswith("prompt-batch"):
        pol = replace(pol, kept=KeptScope.PER_BATCH, sample_fraction=1.0)
    runner = PromptRunner(model, shape, pol, history, oracle=name.startswith("full-batch"))
    return lambda batch: runner.run(batch, prompt_len)


def run_setting(ctx: dict[str, Any], args: argparse.Namespace, protocol: str, prompt: int,
                new: int, emit: Any) -> None:
    """Every method at every ratio on one protocol and one prompt/continuation length."""
    data = load_dataset(dataset("eval", PROTOCOLS[protocol], args.samples, prompt + new),
                        ROOT / "specs", ctx["tokenizer"])
    base = {"protocol": protocol, "prompt_len": prompt, "new_tokens": new}
    configs = [("dense", 0.0)] + [(m, float(r)) for r in args.ratios.split(",")
                                  for m in args.methods.split(",")]
    for name, ratio in configs:
        fn = logits_fn(name, ratio, ctx, prompt)
        ppl = perplexity(fn, data, args.batch, prompt_len=prompt)
        emit({**base, "method": name, "ratio": ratio, **ppl.to_json()})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=6, help="sequences per protocol/setting")
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--calib-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--settings", default="128:128,256:256", help="prompt:new,...")
    ap.add_argument("--ratios", default="0.2,0.4,0.5")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help="from: " + ",".join(METHODS))
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--out", default=str(ROOT / "bench/results/prompt_gating.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    run_on, start, rows = machine.start(), time.perf_counter(), []
    settings = [tuple(int(x) for x in s.split(":")) for s in args.settings.split(",")]
    loaded = demo_model()
    calib = load_dataset(dataset("calib", "kjv-calib.txt", args.calib, args.calib_len),
                         ROOT / "specs", loaded.tokenizer)
    max_len = max(p + n for p, n in settings)
    history = calibrate_history(loaded.model, loaded.shape,
                                policy(0.0, ProbeMode.PROBE, ProbeMetric.PPSP), calib, max_len)
    ctx = {"model": loaded.model, "shape": loaded.shape, "history": history,
           "tokenizer": loaded.tokenizer}

    def emit(row: dict[str, Any]) -> None:
        rows.append(row)
        print(f"  {row['protocol']:<14} {row['prompt_len']}+{row['new_tokens']}  "
              f"{row['method']:<22} {row['ratio']:.0%}  ppl {row['ppl']:.3f}  "
              f"({row['seconds']}s)", file=sys.stderr, flush=True)
        _write(args, run_on, rows, time.perf_counter() - start)

    for prompt, new in settings:  # both protocols of a setting before the next setting
        for protocol in args.protocols.split(","):
            run_setting(ctx, args, protocol, prompt, new, emit)
    _table(rows)
    return 0


def _write(args: argparse.Namespace, run_on: machine.Machine, rows: list[dict[str, Any]],
           seconds: float) -> None:
    result = {"benchmark": "prompt_gating", "model": "SmolLM2-135M-Instruct (demo, float32)",
              "calibration": {"file": "specs/data/kjv-calib.txt", "samples": args.calib,
                              "seq_len": args.calib_len},
              "protocols": {k: f"specs/data/{v}" for k, v in PROTOCOLS.items()},
              "samples": args.samples, "threads": args.threads,
              "policy": {"skip": "layers[0..2]", "targets": ["mlp", "heads"], "round_to": 64,
                         "token_fraction": 0.5, "sample_fraction": 0.05},
              "machine": run_on.entry(), "seconds": round(seconds, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _table(rows: list[dict[str, Any]]) -> None:
    print(f"{'protocol':<15}{'P+N':>9} {'method':<23}{'ratio':>6}{'perplexity':>12}")
    for r in rows:
        print(f"{r['protocol']:<15}{r['prompt_len']:>4}+{r['new_tokens']:<4} "
              f"{r['method']:<23}{r['ratio']:>6.0%}{r['ppl']:>12.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
