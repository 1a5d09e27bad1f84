"""Runtime of the probe-gated ONNX against the dense ONNX on onnxruntime (CPU).

Exports SmolLM2-135M-Instruct three ways with the same exporter (runtime/gated.py): dense
(ratio 0: no gating ops), PP at 40%, and PP at 40% with ``probe_free`` scoring (H
alone, same TopK/Gather/MatMul) whose difference to PP-40% is the probe's cost. Every
variant runs through ``GatedSession`` (IOBinding, H carried), default session options.
Batches 4x128 and 1x512 of held-out tokens; runs are interleaved (variant after variant,
round after round) and the median per variant is reported. Prints a table and writes
bench/results/probe_latency.json with the machine and its load average noted.

Usage: python bench/probe_latency.py [--rounds 15] [--workdir /tmp/prunec-probe-latency]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_quality import ROOT, dataset, demo_model, machine, policy
from prunec.compiler.ir import ProbeMetric, ProbeMode
from prunec.passes.probe import calibrate_history
from prunec.runtime.data import load_dataset
from prunec.runtime.gated import GatedSession, check_static_gating, export_gated_onnx

VARIANTS = (("dense", 0.0, False), ("pp-40", 0.4, False), ("pp-40-probe-free", 0.4, True))
SHAPES = ((4, 128), (1, 512))


def export_all(workdir: Path) -> dict[str, Path]:
    loaded = demo_model()
    calib = load_dataset(dataset("calib", "kjv-calib.txt", 16, 128), ROOT / "specs",
                         loaded.tokenizer)
    base = policy(0.0, ProbeMode.PROBE, ProbeMetric.PPSP)
    history = calibrate_history(loaded.model, loaded.shape, base, calib, max_len=512)
    paths = {}
    for name, ratio, probe_free in VARIANTS:
        path = workdir / name / "model.onnx"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            export_gated_onnx(loaded.model, loaded.shape,
                              policy(ratio, ProbeMode.PROBE, ProbeMetric.PPSP), history, path,
                              probe_free=probe_free)
            print(f"  exported {name} in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        assert check_static_gating(path) == []
        paths[name] = path
    return paths


def eval_tokens(n: int, seq_len: int) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_dir()))
    data = load_dataset(dataset("eval", "kjv-eval.txt", n, seq_len), ROOT / "specs", tok)
    return np.asarray(data.numpy(), dtype=np.int64)


def demo_dir() -> Path:
    from prunec.runtime.models import DEMO_CACHE_NAME, cache_root

    return cache_root() / "models" / DEMO_CACHE_NAME


def time_shape(paths: dict[str, Path], b: int, t: int, rounds: int) -> dict[str, list[float]]:
    sessions = {name: GatedSession(p.parent) for name, p in paths.items()}
    ids = eval_tokens(b * (rounds + 2), t)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for r in range(rounds + 2):
        batch = ids[r * b:(r + 1) * b]
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(batch)
            if r >= 2:  # two warm-up rounds
                times[name].append(time.perf_counter() - start)
    return times


def summarise(times: dict[str, list[float]], b: int, t: int) -> list[dict[str, Any]]:
    dense = statistics.median(times["dense"])
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "batch": b, "seq_len": t, "median_ms": round(med * 1e3, 2),
                     "speedup_vs_dense": round(dense / med, 3), "runs": len(ts)})
    pp, free = statistics.median(times["pp-40"]), statistics.median(times["pp-40-probe-free"])
    rows.append({"variant": "probe share of pp-40", "batch": b, "seq_len": t,
                 "probe_ms": round((pp - free) * 1e3, 2), "share": round((pp - free) / pp, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--workdir", default="/tmp/prunec-probe-latency")
    ap.add_argument("--out", default=str(ROOT / "bench/results/probe_latency.json"))
    args = ap.parse_args(argv)
    paths = export_all(Path(args.workdir))
    load_before = os.getloadavg()
    rows = []
    for b, t in SHAPES:
        rows += summarise(time_shape(paths, b, t, args.rounds), b, t)
    result = {"benchmark": "probe_latency", "model": "SmolLM2-135M-Instruct (float32)",
              "provider": "CPUExecutionProvider", "rounds": args.rounds,
              "machine": {**machine(), "loadavg_before": load_before,
                          "loadavg_after": os.getloadavg()}, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _table(rows)
    return 0


def _table(rows: list[dict[str, Any]]) -> None:
    print(f"{'variant':<22}{'shape':>9}{'median ms':>11}{'vs dense':>10}")
    for r in rows:
        shape = f"{r['batch']}x{r['seq_len']}"
        if "share" in r:
            print(f"{r['variant']:<22}{shape:>9}{r['probe_ms']:>11.1f}{r['share']:>9.0%} of pp-40")
        else:
            print(f"{r['variant']:<22}{shape:>9}{r['median_ms']:>11.1f}"
                  f"{r['speedup_vs_dense']:>9.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
