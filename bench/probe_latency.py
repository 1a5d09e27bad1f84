"""Runtime of the probe-gated ONNX against the dense ONNX on onnxruntime (CPU).

Exports SmolLM2-135M-Instruct three ways with the same exporter (runtime/gated.py): dense
(ratio 0: no gating ops), PP at 40%, and PP at 40% with ``probe_free`` scoring (H
alone, same TopK/Gather/MatMul) whose difference to PP-40% is the probe's cost. Every
variant runs through ``GatedSession`` (IOBinding, H carried), default session options.
The gate's share of the time is also read from an onnxruntime profile of PP-40% (nodes whose
exporter stack trace passes through ``GatedBlock.choose``: probe, fusion, scores, TopK).
For reference, the dense model is also exported the way a static build ships it
(``passes.capture`` + ``runtime.export``): ``dense-static`` (plain) and ``dense-static-fused``
(onnxruntime fusions, the static build default; gated graphs are not fused).
``pp-40-len128`` is PP-40 exported for 128-token traffic (H has 128 position columns
instead of 512), timed at 4x128 only; ``pp-40-compensate`` is PP-40 with
``compensate = on``; ``pp-40-copy-h`` runs PP-40's graph with a session that binds fresh
H outputs every call (``GatedSession(inplace=False)``, the behaviour before H was updated in
place). Batches 4x128 and 1x512 of held-out tokens; runs are interleaved (variant after
variant, round after round) and the median per variant is reported. Prints a table and writes
bench/results/probe_latency.json with the machine and its load average noted.

Usage: python bench/probe_latency.py [--rounds 15] [--workdir /tmp/prunec-probe-latency]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import machine
from probe_quality import ROOT, dataset, demo_model, policy

from prunec.compiler.budget import as_fraction, ceil_count
from prunec.compiler.ir import ProbeMetric, ProbeMode
from prunec.passes.probe import calibrate_history
from prunec.runtime.data import load_dataset
from prunec.runtime.gated import GatedSession, check_static_gating, export_gated_onnx


class Variant(NamedTuple):
    name: str
    ratio: float
    probe_free: bool = False
    max_len: int = 512  # H's position columns: the longest sequence the variant runs
    compensate: bool = False
    inplace: bool = True  # GatedSession updates H in its own buffers
    export_of: str = ""  # runs another variant's export (same graph, other session setting)


VARIANTS = (Variant("dense", 0.0), Variant("pp-40", 0.4),
            Variant("pp-40-probe-free", 0.4, probe_free=True),
            Variant("pp-40-len128", 0.4, max_len=128),
            Variant("pp-40-compensate", 0.4, compensate=True),
            Variant("pp-40-copy-h", 0.4, inplace=False, export_of="pp-40"))
STATIC = (("dense-static", False), ("dense-static-fused", True))
PROFILE_RUNS = 3
SHAPES = ((4, 128), (1, 512))


def export_all(workdir: Path, names: list[str]) -> dict[str, Path]:
    loaded = demo_model()
    calib = load_dataset(dataset("calib", "kjv-calib.txt", 16, 128), ROOT / "specs",
                         loaded.tokenizer)
    base = policy(0.0, ProbeMode.PROBE, ProbeMetric.PPSP)
    histories = {n: calibrate_history(loaded.model, loaded.shape, base, calib, max_len=n)
                 for n in {v.max_len for v in VARIANTS}}
    paths = {}
    needed = set(names) | {v.export_of for v in VARIANTS if v.name in names and v.export_of}
    for v in (v for v in VARIANTS if v.name in needed and not v.export_of):
        path = workdir / v.name / "model.onnx"
        manifest = path.with_suffix(".gating.json")
        if not manifest.exists() or "history_inplace" not in json.loads(manifest.read_text()):
            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            export_gated_onnx(loaded.model, loaded.shape,
                              policy(v.ratio, ProbeMode.PROBE, ProbeMetric.PPSP,
                                     compensate=v.compensate),
                              histories[v.max_len], path, probe_free=v.probe_free)
            print(f"  exported {v.name} in {time.perf_counter() - start:.0f}s", file=sys.stderr)
        assert check_static_gating(path) == []
        paths[v.name] = path
    for v in (v for v in VARIANTS if v.name in names and v.export_of):
        paths[v.name] = paths[v.export_of]
    paths = {name: path for name, path in paths.items() if name in names}
    for name, fuse in (v for v in STATIC if v[0] in names):
        paths[name] = export_static(loaded.model, workdir / name / "model.onnx", fuse)
    return paths


def export_static(model: Any, path: Path, fuse: bool) -> Path:
    """The dense model as a static build exports it (no gating)."""
    from prunec.passes.capture import capture, reexport
    from prunec.runtime.export import ExportConfig, export_onnx

    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        export_onnx(reexport(capture(model)), path, config=ExportConfig(fuse=fuse))
        print(f"  exported {path.parent.name} in {time.perf_counter() - start:.0f}s",
              file=sys.stderr)
    return path


class StaticSession:
    """A plain onnxruntime session with GatedSession's ``run(input_ids)``."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(self, input_ids: np.ndarray) -> np.ndarray:
        out: np.ndarray = self.session.run(["logits"], {"input_ids": input_ids})[0]
        return out


def eval_tokens(n: int, seq_len: int) -> np.ndarray:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(demo_dir()))
    data = load_dataset(dataset("eval", "kjv-eval.txt", n, seq_len), ROOT / "specs", tok)
    return np.asarray(data.numpy(), dtype=np.int64)


def demo_dir() -> Path:
    from prunec.runtime.models import DEMO_CACHE_NAME, cache_root

    return cache_root() / "models" / DEMO_CACHE_NAME


def time_shape(paths: dict[str, Path], b: int, t: int, rounds: int) -> dict[str, list[float]]:
    gated = {v.name: v for v in VARIANTS}
    sessions: dict[str, Any] = {
        name: StaticSession(p) if name not in gated
        else GatedSession(p.parent, inplace=gated[name].inplace)
        for name, p in paths.items() if name not in gated or gated[name].max_len >= t}
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


def probe_nodes(path: Path) -> set[str]:
    """Nodes of the gated graph that compute the gate (probe, fusion, scores, TopK): the
    exporter's stack trace of each node names ``GatedBlock.choose``."""
    import onnx

    model = onnx.load(str(path))
    return {n.name for n in model.graph.node
            if any(p.key == "pkg.torch.onnx.stack_trace" and "self.choose(" in p.value
                   for p in n.metadata_props)}


def profiled_share(path: Path, b: int, t: int) -> dict[str, Any]:
    """onnxruntime profiling of ``path``: the share of node time spent in gate nodes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.parent / f"profile_{b}x{t}")
    session = GatedSession(path.parent, session_options=opts)
    for batch in np.split(eval_tokens(b * PROFILE_RUNS, t), PROFILE_RUNS):
        session.run(batch)
    events = json.loads(Path(session.session.end_profiling()).read_text())
    gate = probe_nodes(path)
    total = probe = 0.0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            total += e["dur"]
            probe += e["dur"] if e["name"][:-len("_kernel_time")] in gate else 0.0
    return {"variant": "gate share of pp-40 (ORT profile)", "batch": b, "seq_len": t,
            "share": round(probe / total, 3) if total else None}


def mac_bound(path: Path, b: int, t: int) -> dict[str, Any]:
    """Multiply-accumulates of one ``b x t`` call of the gated graph at ``path`` against the
    dense model, counted from its manifest: projections, attention scores (the full ``T x T``
    products, as onnxruntime computes them) and the lm_head; per gated block the smaller
    projections at the kept counts plus the probe (q/k/v and gate/up at full width on
    ``ceil(f_t T)`` positions of ``ceil(f_s B)`` samples, attention among them). Their ratio
    is the speedup the graph would reach if time followed arithmetic: an upper bound for
    compute-bound CPU runs, before any Gather, TopK or H traffic."""
    m = json.loads(path.with_suffix(".gating.json").read_text())
    shape, pol, keep = m["model"], m["policy"], m["keep"]
    hid, inter, d = int(shape["hidden"]), int(shape["intermediate"]), int(shape["head_dim"])
    heads, kv = int(shape["n_heads"]), int(shape["n_kv_heads"])

    def block(q_heads: int, channels: int, tokens: int, seqs: int, length: int) -> int:
        proj = hid * d * (2 * q_heads + 2 * kv) + 3 * hid * channels
        return tokens * proj + seqs * q_heads * length * length * d * 2

    dense_layer = block(heads, inter, b * t, b, t)
    probe_t = ceil_count(t, as_fraction(pol["token_fraction"]), 2)  # the graph's own counts
    probe_b = ceil_count(b, as_fraction(pol["sample_fraction"]), 1)
    probe = probe_t * probe_b * (hid * d * (heads + 2 * kv) + 2 * hid * inter) \
        + probe_b * heads * probe_t ** 2 * d * 2
    gated_layers = {name.split(".")[1] for name in keep}
    head = b * t * hid * shape["vocab"]
    dense = shape["n_layers"] * dense_layer + head
    gated = head
    for layer in range(shape["n_layers"]):
        q_heads = keep.get(f"history.{layer}.attn", heads)
        channels = keep.get(f"history.{layer}.mlp", inter)
        gated += block(q_heads, channels, b * t, b, t)
        gated += probe if str(layer) in gated_layers else 0
    return {"variant": "MAC bound of pp-40", "batch": b, "seq_len": t,
            "dense_gmac": round(dense / 1e9, 2), "gated_gmac": round(gated / 1e9, 2),
            "probe_gmac": round(probe * len(gated_layers) / 1e9, 2),
            "bound_speedup": round(dense / gated, 3)}


def summarise(times: dict[str, list[float]], b: int, t: int) -> list[dict[str, Any]]:
    dense = statistics.median(times["dense"])
    fused = statistics.median(times.get("dense-static-fused", [float("nan")]))
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"variant": name, "batch": b, "seq_len": t, "median_ms": round(med * 1e3, 2),
                     "speedup_vs_dense": round(dense / med, 3),
                     "speedup_vs_dense_static_fused": round(fused / med, 3), "runs": len(ts)})
    if "pp-40-probe-free" in times:
        pp, free = statistics.median(times["pp-40"]), statistics.median(times["pp-40-probe-free"])
        rows.append({"variant": "probe share of pp-40", "batch": b, "seq_len": t,
                     "probe_ms": round((pp - free) * 1e3, 2), "share": round((pp - free) / pp, 3)})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--workdir", default="/tmp/prunec-probe-latency")
    ap.add_argument("--variants",
                    default=",".join([*(v.name for v in VARIANTS), *(s[0] for s in STATIC)]))
    ap.add_argument("--out", default=str(ROOT / "bench/results/probe_latency.json"))
    args = ap.parse_args(argv)
    paths = export_all(Path(args.workdir), args.variants.split(","))
    run_on = machine.start()
    rows = []
    for b, t in SHAPES:
        rows += summarise(time_shape(paths, b, t, args.rounds), b, t)
        if "pp-40" in paths:
            rows.append(profiled_share(paths["pp-40"], b, t))
            rows.append(mac_bound(paths["pp-40"], b, t))
    result = {"benchmark": "probe_latency", "model": "SmolLM2-135M-Instruct (float32)",
              "provider": "CPUExecutionProvider", "rounds": args.rounds,
              "machine": run_on.entry(), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    _table(rows)
    return 0


def _table(rows: list[dict[str, Any]]) -> None:
    print(f"{'variant':<22}{'shape':>9}{'median ms':>11}{'vs dense':>10}{'vs fused':>10}")
    for r in rows:
        shape = f"{r['batch']}x{r['seq_len']}"
        if "bound_speedup" in r:
            print(f"{r['variant']:<22}{shape:>9}{r['gated_gmac']:>10.1f}G"
                  f"{r['bound_speedup']:>9.2f}x   (dense {r['dense_gmac']:.1f} GMAC, "
                  f"probe {r['probe_gmac']:.1f})")
        elif "probe_ms" not in r and "share" in r:
            print(f"{r['variant']:<22}{shape:>9}{'':>11}{r['share']:>9.0%} of node time")
        elif "share" in r:
            print(f"{r['variant']:<22}{shape:>9}{r['probe_ms']:>11.1f}{r['share']:>9.0%} of pp-40")
        else:
            print(f"{r['variant']:<22}{shape:>9}{r['median_ms']:>11.1f}"
                  f"{r['speedup_vs_dense']:>9.2f}x{r['speedup_vs_dense_static_fused']:>9.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
