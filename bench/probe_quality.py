"""Held-out perplexity of Probe Pruning against its baselines on SmolLM2-135M-Instruct.

Configurations, each at 20% and 40% (model-wide ratio, first 3 layers skipped, per-layer
ratio rescaled, MLP kept counts rounded to 64, heads by int(r * heads)): PP (probe = top
50% positions x top 5% samples), full-batch probing (upper bound), both again with
``compensate = on`` (skipped units add W[:, skipped] @ the probe's mean activation), and
the static wanda-sp / flap masks from the same calibration; plus the dense model. H is initialised
from specs/data/kjv-calib.txt (Genesis-Exodus) and perplexity is measured on
specs/data/kjv-eval.txt (Matthew-Mark), disjoint files, in batches, H carried from batch to
batch; ``--calib-file`` / ``--eval-file`` choose other files of specs/data/. Prints a table
and writes bench/results/probe_quality.json (machine noted).

Usage: python bench/probe_quality.py [--samples 40] [--calib 32] [--seq-len 128] [--batch 8]
       [--ratios 0.2,0.4] [--calib-file F] [--eval-file F] [--methods M,..] [--no-dense]
       [--out FILE]   (the JSON is rewritten after each row)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import (
    DataFormat,
    DatasetDecl,
    DType,
    LayerSelector,
    ModelDecl,
    ModelSource,
    ProbeMetric,
    ProbeMode,
    ProbePolicy,
    ProbeTarget,
    SelectorKind,
)
from prunec.passes.probe import ProbeRunner, calibrate_history
from prunec.runtime.data import load_dataset
from prunec.runtime.evaluate import perplexity, torch_logits
from prunec.runtime.models import load_model

ROOT = Path(__file__).resolve().parents[1]
SPAN = Span("bench", 0, 0, 0, 0)
CONFIGS = (("pp", ProbeMode.PROBE, ProbeMetric.PPSP),
           ("full-batch", ProbeMode.FULL_BATCH, ProbeMetric.PPSP),
           ("pp-compensate", ProbeMode.PROBE, ProbeMetric.PPSP),  # compensate = on
           ("full-batch-compensate", ProbeMode.FULL_BATCH, ProbeMetric.PPSP),
           ("wanda-sp", ProbeMode.PROBE, ProbeMetric.WANDA_SP),
           ("flap", ProbeMode.PROBE, ProbeMetric.FLAP),
           ("flap-no-bias", ProbeMode.PROBE, ProbeMetric.FLAP))  # diagnostic: without compensation
DEFAULT_METHODS = "pp,full-batch,pp-compensate,full-batch-compensate,wanda-sp,flap"


def policy(ratio: float, mode: ProbeMode, metric: ProbeMetric, round_to: int = 64,
           compensate: bool = False) -> ProbePolicy:
    skip = (LayerSelector(SelectorKind.RANGE, 0, 2, SPAN),)
    return ProbePolicy(ratio, (ProbeTarget.MLP, ProbeTarget.HEADS), skip, mode, 0.5, 0.05, 0.99,
                       "calib", metric, round_to, SPAN, compensate)


def dataset(name: str, file: str, samples: int, seq_len: int) -> DatasetDecl:
    return DatasetDecl(name, DataFormat.TEXT, (f"data/{file}",), None, samples, seq_len, 0,
                       None, SPAN)


def demo_model() -> Any:
    return load_model(ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, SPAN), ROOT / "specs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=40)
    ap.add_argument("--calib", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--ratios", default="0.2,0.4")
    ap.add_argument("--calib-file", default="kjv-calib.txt", help="in specs/data/")
    ap.add_argument("--eval-file", default="kjv-eval.txt", help="in specs/data/")
    ap.add_argument("--no-dense", action="store_true", help="skip the dense row")
    ap.add_argument("--methods", default=DEFAULT_METHODS,
                    help="comma-separated, from: " + ",".join(c[0] for c in CONFIGS))
    ap.add_argument("--out", default=str(ROOT / "bench/results/probe_quality.json"))
    args = ap.parse_args(argv)
    run_on = machine.start()
    loaded = demo_model()
    model, shape = loaded.model, loaded.shape
    calib = load_dataset(dataset("calib", args.calib_file, args.calib, args.seq_len),
                         ROOT / "specs", loaded.tokenizer)
    data = load_dataset(dataset("eval", args.eval_file, args.samples, args.seq_len),
                        ROOT / "specs", loaded.tokenizer)
    start = time.perf_counter()
    history = calibrate_history(model, shape, policy(0.0, ProbeMode.PROBE, ProbeMetric.PPSP),
                                calib, max_len=args.seq_len)
    rows = [] if args.no_dense else [
        {"method": "dense", "ratio": 0.0,
         **perplexity(torch_logits(model), data, args.batch).to_json()}]
    for row in rows:
        _print(row)
    for ratio in (float(r) for r in args.ratios.split(",")):
        for name, mode, metric in (c for c in CONFIGS if c[0] in args.methods.split(",")):
            pol = policy(ratio, mode, metric, compensate=name.endswith("-compensate"))
            runner = ProbeRunner(model, shape, pol, history)
            if name == "flap-no-bias":
                for block in runner.gated.blocks:
                    block.bias = None
            rows.append({"method": name, "ratio": ratio,
                         **perplexity(runner.run, data, args.batch).to_json()})
            _print(rows[-1])
            del runner
            _write(args, run_on, rows, time.perf_counter() - start)
    _write(args, run_on, rows, time.perf_counter() - start)
    _table(rows)
    return 0


def _write(args: argparse.Namespace, run_on: machine.Machine, rows: list[dict[str, Any]],
           seconds: float) -> None:
    """The JSON result so far (rewritten after every configuration; load_after as of now)."""
    result = {"benchmark": "probe_quality", "model": "SmolLM2-135M-Instruct (demo, float32)",
              "calibration": {"file": f"specs/data/{args.calib_file}", "samples": args.calib,
                              "seq_len": args.seq_len},
              "evaluation": {"file": f"specs/data/{args.eval_file}", "samples": args.samples,
                             "seq_len": args.seq_len, "batch": args.batch},
              "policy": {"skip": "layers[0..2]", "round_to": 64, "token_fraction": 0.5,
                         "sample_fraction": 0.05, "momentum": 0.99},
              "machine": run_on.entry(), "seconds": round(seconds, 1), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def _print(row: dict[str, Any]) -> None:
    print(f"  {row['method']:<22} {row['ratio']:.0%}  ppl {row['ppl']:.3f}  ({row['seconds']}s)",
          file=sys.stderr, flush=True)


def _table(rows: list[dict[str, Any]]) -> None:
    print(f"{'method':<23}{'ratio':>7}{'perplexity':>12}")
    for row in rows:
        print(f"{row['method']:<23}{row['ratio']:>7.0%}{row['ppl']:>12.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
