"""End-to-end ``prunec build`` wall times for the example specs, and the locked rebuild.

Runs, each as a fresh ``prunec`` process on the demo model (its cache already converted):
1. ``prunec build specs/smollm2-magnitude.prune`` (a static one-shot build, no search);
2. ``prunec build specs/smollm2-multipruner.prune`` (the 20% MultiPruner search);
3. ``prunec build specs/smollm2-multipruner.prune --lock <2>/plan.lock.json`` (no search).
Reported: wall seconds of each process, the stage timings from its ``report.json``, the
sha256 of each ``model.onnx``, and whether the locked rebuild's ONNX is byte-identical to
the searched one. Prints a table and writes ``bench/results/spec_build.json`` (machine noted).

    python bench/spec_build.py [--workdir DIR] [--only magnitude]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import machine
from methods_common import ROOT, write_json

PRUNEC = [sys.executable, "-m", "prunec"]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build(name: str, spec: str, out: Path, *extra: str) -> dict[str, Any]:
    start = time.perf_counter()
    proc = subprocess.run([*PRUNEC, "build", str(ROOT / "specs" / spec), "-o", str(out),
                           "--quiet", *extra], capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: prunec exited {proc.returncode}\n{proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return {"build": name, "spec": spec, "args": list(extra), "wall_s": wall,
            "timings_s": report["timings_s"], "onnx_sha256": sha256(out / "model.onnx"),
            "params": report["params"]["pruned"],
            "perplexity": {k: v["pruned"]["ppl"] for k, v in report["perplexity"].items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--only", choices=["magnitude", "multipruner"], default=None)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "spec_build.json")
    args = p.parse_args()
    run_on = machine.start()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        rows = []
        if args.only in (None, "magnitude"):
            rows.append(build("static (magnitude)", "smollm2-magnitude.prune", work / "mag"))
        if args.only in (None, "multipruner"):
            rows.append(build("search (multipruner 20%)", "smollm2-multipruner.prune",
                              work / "mp"))
            rows.append(build("locked rebuild", "smollm2-multipruner.prune", work / "mp-lock",
                              "--lock", str(work / "mp" / "plan.lock.json")))
    identical = None
    if len(rows) >= 2 and rows[-1]["build"] == "locked rebuild":
        identical = rows[-1]["onnx_sha256"] == rows[-2]["onnx_sha256"]
    write_json(args.out, {"machine": run_on.entry(), "rows": rows,
                          "locked_onnx_byte_identical": identical})
    print(f"{'build':<26}{'wall s':>8}{'plan s':>8}{'compile s':>11}{'eval s':>8}  sha256")
    for r in rows:
        t = r["timings_s"]
        evals = t.get("evaluate_dense", 0) + t.get("evaluate_pruned", 0)
        print(f"{r['build']:<26}{r['wall_s']:>8.1f}{t['plan']:>8.1f}{t['compile']:>11.1f}"
              f"{evals:>8.1f}  {r['onnx_sha256'][:16]}")
    if identical is not None:
        print(f"locked rebuild byte-identical to the searched build: {identical}")


if __name__ == "__main__":
    main()
