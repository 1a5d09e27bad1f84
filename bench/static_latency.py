"""Static pruning latency: SmolLM2-135M dense vs pruned ONNX on onnxruntime (CPU).

Plans: a magnitude width plan computed here, MLP channels only: every layer keeps the
same number c of intermediate channels (a multiple of 64), those with the largest
L1(gate row) + L1(up row); c is the multiple of 64 whose parameter reduction
(``compiler.plan.param_count``, embeddings included) is closest to 10 / 20 / 30 %.
Attention is left whole. Each model is exported twice: ``plain`` (standard ONNX ops) and
``fused`` (``fuse = on``, the build default: onnxruntime's RMSNorm / rotary / attention
kernels, see ``prunec.runtime.export``); dense and pruned are compared within a variant.

Timing: one session per model (default CPU options), inputs 1x512 and 4x128, warm-up, then
``--reps`` rounds of interleaved runs (dense, pruned, dense, pruned, ...) so both models see
the same machine load; medians are reported. The bound is the FLOPs ratio
``flops_per_token(dense) / flops_per_token(pruned)`` at the input's sequence length;
efficiency = measured speedup / bound (goal: >= 0.9). Prints a table and writes
``bench/results/static_latency.json`` with the machine noted.

Run: ``python bench/static_latency.py [--reps 7] [--workdir DIR] [--reuse]`` (four ONNX
exports, then the timed runs; with ``--reuse`` the exports already in DIR are kept). The
``build_seconds`` in the JSON time each export stage; ``machine`` records the load average
before and after the run (``bench/machine.py``).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import DType, ModelDecl, ModelShape, ModelSource
from prunec.compiler.plan import LayerPlan, Plan, flops_per_token, param_count
from prunec.passes.capture import capture, reexport
from prunec.passes.pipeline import run_pipeline
from prunec.runtime.export import ExportConfig, export_onnx

TARGETS = (0.10, 0.20, 0.30)
INPUTS = ((1, 512), (4, 128))
RESULTS = Path(__file__).parent / "results" / "static_latency.json"
REUSE = False  # set by --reuse


VARIANTS = ("plain", "fused")


@dataclass(frozen=True)
class Point:
    graph: str  # plain or fused
    target: float
    removed: float  # achieved fraction of all parameters removed
    kept_channels: int
    batch: int
    seq: int
    dense_ms: float
    pruned_ms: float
    speedup: float
    flops_bound: float
    efficiency: float


def channel_order(model: Any) -> list[list[int]]:
    """Per layer, MLP channels by descending L1(gate row) + L1(up row)."""
    order = []
    for layer in model.model.layers:
        score = layer.mlp.gate_proj.weight.abs().sum(1) + layer.mlp.up_proj.weight.abs().sum(1)
        order.append(torch.argsort(score, descending=True).tolist())
    return order


def width_plan(shape: ModelShape, order: list[list[int]], kept: int) -> Plan:
    layers = tuple(LayerPlan(i, kept_channels=tuple(sorted(order[i][:kept])))
                   for i in range(shape.n_layers))
    return Plan(layers, method="bench-magnitude-mlp")


def plan_for(shape: ModelShape, order: list[list[int]], target: float) -> tuple[Plan, int]:
    dense = param_count(shape, Plan.dense(shape))
    options = range(64, shape.intermediate, 64)
    removed = {c: 1 - param_count(shape, width_plan(shape, order, c)) / dense for c in options}
    kept = min(options, key=lambda c: abs(removed[c] - target))
    return width_plan(shape, order, kept), kept


def export(gm: torch.fx.GraphModule | None, plan: Plan, shape: ModelShape, path: Path,
           fuse: bool) -> tuple[Path, dict[str, float]]:
    """Passes, re-export and ONNX export of one plan, with the seconds of each stage
    (``--reuse``: an existing file from an earlier run with the same plan is kept)."""
    if gm is None or (REUSE and path.exists()):
        return path, {}
    t0 = time.perf_counter()
    pruned, _ = run_pipeline(copy.deepcopy(gm), plan, shape)
    t1 = time.perf_counter()
    program = reexport(pruned)
    t2 = time.perf_counter()
    info = export_onnx(program, path, config=ExportConfig(fuse=fuse))
    t3 = time.perf_counter()
    return info.path, {"passes_s": t1 - t0, "reexport_s": t2 - t1, "onnx_export_s": t3 - t2}


def session(path: Path) -> Any:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def interleaved_ms(dense: Any, pruned: Any, ids: np.ndarray, reps: int) -> tuple[float, float]:
    feed = {"input_ids": ids}
    for s in (dense, pruned):
        s.run(None, feed)
    times: dict[int, list[float]] = {0: [], 1: []}
    for _ in range(reps):
        for k, s in enumerate((dense, pruned)):
            start = time.perf_counter()
            s.run(None, feed)
            times[k].append((time.perf_counter() - start) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(graph: str, target: float, kept: int, plan: Plan, shape: ModelShape,
            sessions: tuple[Any, Any], reps: int) -> list[Point]:
    dense_plan = Plan.dense(shape)
    removed = 1 - param_count(shape, plan) / param_count(shape, dense_plan)
    rng = np.random.default_rng(0)
    points = []
    for batch, seq in INPUTS:
        ids = rng.integers(0, shape.vocab, (batch, seq), dtype=np.int64)
        dense_ms, pruned_ms = interleaved_ms(*sessions, ids, reps)
        bound = flops_per_token(shape, dense_plan, seq) / flops_per_token(shape, plan, seq)
        speedup = dense_ms / pruned_ms
        points.append(Point(graph, target, removed, kept, batch, seq, dense_ms, pruned_ms, speedup,
                            bound, speedup / bound))
    return points


def print_table(points: list[Point]) -> None:
    header = ("graph", "target", "removed", "mlp kept", "input", "dense ms", "pruned ms", "speedup",
              "FLOPs bound", "efficiency")
    rows = [(p.graph, f"{p.target:.0%}", f"{p.removed:.1%}", str(p.kept_channels), f"{p.batch}x{p.seq}",
             f"{p.dense_ms:.1f}", f"{p.pruned_ms:.1f}", f"{p.speedup:.3f}",
             f"{p.flops_bound:.3f}", f"{p.efficiency:.2f}") for p in points]
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title="SmolLM2-135M static pruning, onnxruntime CPU")
        for h in header:
            table.add_column(h, justify="right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    except ImportError:
        for row in (header, *rows):
            print("  ".join(f"{c:>11}" for c in row))


def load_demo() -> tuple[torch.nn.Module, ModelShape]:
    from prunec.runtime.models import load_model

    decl = ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span.unknown("bench"))
    loaded = load_model(decl, Path.cwd())
    return loaded.model, loaded.shape


def run(reps: int, workdir: Path) -> dict[str, Any]:
    run_on = machine.start()
    start = time.perf_counter()
    model, shape = load_demo()
    build = {"load_s": time.perf_counter() - start}
    order = channel_order(model)
    names = ["dense"] + [f"pruned-{round(t * 100)}" for t in TARGETS]
    paths = [workdir / f"{n}-{v}.onnx" for v in VARIANTS for n in names]
    start = time.perf_counter()
    gm = None if REUSE and all(p.exists() for p in paths) else capture(model)
    build["capture_s"] = time.perf_counter() - start
    points: list[Point] = []
    for variant in VARIANTS:
        fuse = variant == "fused"
        dense_path, times = export(gm, Plan.dense(shape), shape,
                                   workdir / f"dense-{variant}.onnx", fuse)
        build |= {f"{k}@dense-{variant}": v for k, v in times.items()}
        dense = session(dense_path)
        for target, name in zip(TARGETS, names[1:]):
            plan, kept = plan_for(shape, order, target)
            path, times = export(gm, plan, shape, workdir / f"{name}-{variant}.onnx", fuse)
            build |= {f"{k}@{target:.0%}-{variant}": v for k, v in times.items()}
            points += measure(variant, target, kept, plan, shape, (dense, session(path)), reps)
        del dense
    return {"benchmark": "static_latency", "model": "SmolLM2-135M-Instruct (float32)",
            "plan": "magnitude width, MLP channels only, same width in every layer",
            "reps": reps, "machine": run_on.entry(), "build_seconds": build,
            "points": [asdict(p) for p in points]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--reuse", action="store_true",
                        help="keep ONNX files already in --workdir (timing only)")
    args = parser.parse_args()
    global REUSE
    REUSE = args.reuse
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args.reps, args.workdir or Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print_table([Point(**p) for p in result["points"]])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
