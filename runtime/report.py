"""The build report: what was removed, what it costs and saves, and whether the gates held.

``BuildReport.to_json()`` is ``report.json`` in the artifact (schema version 1):
  schema, passed, spec {name, file}, model {source, location, dtype, device, source_hash,
  shape} (dtype and device as the build loaded it: ``runtime.device``),
  method, plan_summary {attn_removed, mlp_removed, heads_kept, channels_kept},
  params {dense, pruned, reduction, onnx_initializers, onnx_matrices, expected_matrices,
          agree},
  flops_per_token {seq_len, dense, pruned, reduction},
  layers [{index, attn, heads_kept, heads_total, kv_heads_kept, mlp, channels_kept,
           channels_total}],
  perplexity {dataset: {samples, seq_len, dense: {ppl, mean_nll, sequences, tokens,
              seconds} | null, pruned: {...} | null, ratio}},
  gates [{kind, dataset, limit, value, held, line, message}],
  providers {requested, used, notes}, timings_s {stage: seconds},
  memory {method, unit, peak_rss_mb, stages_peak_rss_mb {stage: MiB}[, cuda_peak_mb]}
  (``runtime.stages``), compile {passes, export}
  (what the graph passes and the exporter reported), method_info {from_lock, stats,
  reconstruct {setting, damp}, refit_layers} (static methods, manual plans with reconstruct), genai {written, file | reason} (``runtime.genai``),
  versions {...}, notes [str].
Params and FLOPs come from ``compiler.plan.param_count`` / ``flops_per_token``; the ONNX
cross-check counts the float initializers of rank 2 (the weight matrices; norms and
constants are 1-D) and compares them with the plan's matrix parameters (``param_count``
minus the RMSNorm vectors): ``agree`` is True when they are equal.
Gates: a perplexity gate holds when pruned <= relative * dense and pruned <= absolute
(each limit when given); a params gate holds when the plan's pruned parameter count is at
most ``max_params``. ``assemble`` builds the report from a build's ``Outcome``. Rendering
(rich tables) lives here too; building the report never prints.
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunec.compiler.ir import Gate, ModelShape, ParamsGate, PerplexityGate, Spec
from prunec.compiler.plan import Plan, flops_per_token, param_count

SCHEMA = 1


@dataclass(frozen=True)
class GateResult:
    kind: str  # "perplexity" | "params"
    dataset: str | None
    limit: float
    value: float | None  # None when the value could not be measured
    held: bool
    line: int
    message: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DatasetResult:
    name: str
    samples: int
    seq_len: int
    dense: Any = None  # evaluate.Perplexity | None
    pruned: Any = None

    def to_json(self) -> dict[str, Any]:
        ratio = (self.pruned.ppl / self.dense.ppl) if self.dense and self.pruned else None
        return {"samples": self.samples, "seq_len": self.seq_len,
                "dense": self.dense.to_json() if self.dense else None,
                "pruned": self.pruned.to_json() if self.pruned else None, "ratio": ratio}


@dataclass(frozen=True)
class BuildReport:
    spec: dict[str, Any]
    model: dict[str, Any]
    shape: ModelShape
    plan: Plan
    flops_seq_len: int
    onnx_counts: tuple[int, int] | None  # (all float initializer params, rank-2 ones)
    perplexity: tuple[DatasetResult, ...]
    gates: tuple[GateResult, ...]
    providers: dict[str, Any]
    timings: dict[str, float]
    compile_info: dict[str, Any] = field(default_factory=dict)  # what the passes/export said
    method_info: dict[str, Any] = field(default_factory=dict)  # static method: stats, lock
    notes: tuple[str, ...] = field(default_factory=tuple)
    genai: dict[str, Any] = field(default_factory=dict)  # genai_config.json written, or why not
    memory: dict[str, Any] = field(default_factory=dict)  # peak RSS per stage (runtime.stages)

    @property
    def passed(self) -> bool:
        return all(g.held for g in self.gates)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA, "passed": self.passed, "spec": self.spec, "model": self.model,
            "method": self.plan.method, "plan_summary": plan_summary(self.plan, self.shape),
            "params": params_json(self.shape, self.plan, self.onnx_counts),
            "flops_per_token": flops_json(self.shape, self.plan, self.flops_seq_len),
            "layers": layer_rows(self.plan, self.shape),
            "perplexity": {d.name: d.to_json() for d in self.perplexity},
            "gates": [g.to_json() for g in self.gates], "providers": self.providers,
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "memory": self.memory,
            "compile": self.compile_info, "method_info": self.method_info, "genai": self.genai,
            "versions": versions(), "notes": list(self.notes),
        }


# -------------------------------------------------------------------- assembly


@dataclass(frozen=True)
class Outcome:
    """What a build measured and produced, for ``assemble``."""

    spec: Spec
    loaded: Any  # runtime.models.LoadedModel
    plan: Plan
    results: tuple[DatasetResult, ...]  # the evaluated datasets, dense and pruned
    providers: dict[str, Any]  # {requested, used, notes} of the pruned model's session
    onnx_path: Path
    compiled: dict[str, Any]  # what the compile backend reported
    flops_seq_len: int  # FLOPs/token at this length (the longest evaluated sequence)


def assemble(o: Outcome) -> BuildReport:
    """The ``BuildReport`` of a build (timings, method info and notes are added later)."""
    spec, loaded = o.spec, o.loaded
    model = {"source": spec.model.source.value, "location": spec.model.location,
             "dtype": loaded.dtype, "device": loaded.device, "source_hash": loaded.source_hash,
             "shape": dataclasses.asdict(loaded.shape)}
    by_name = {r.name: r for r in o.results}
    gates = check_gates(spec.gates, param_count(loaded.shape, o.plan), by_name)
    return BuildReport(spec={"name": spec.name, "file": spec.file}, model=model,
                       shape=loaded.shape, plan=o.plan, flops_seq_len=o.flops_seq_len,
                       onnx_counts=onnx_counts(o.onnx_path), perplexity=o.results,
                       gates=gates, providers=o.providers, timings={},
                       compile_info=o.compiled, notes=tuple(loaded.notes))


def onnx_counts(path: Path) -> tuple[int, int]:
    """(float initializer params, those of rank 2) of an ONNX file (weights not read:
    ``runtime.onnx_wire``)."""
    import math

    import onnx

    from prunec.runtime.onnx_wire import initializer_headers

    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
              onnx.TensorProto.DOUBLE}
    total = matrices = 0
    for data_type, dims in initializer_headers(path):
        if data_type in floats:
            total += math.prod(dims)
            matrices += math.prod(dims) if len(dims) == 2 else 0
    return total, matrices


def refit_notes(plan: Plan, refit: Any) -> tuple[str, ...]:
    """A note on the plan's reconstruction ({layer: LayerRefit} or None), which the ONNX
    graph and every ``export hf`` carry."""
    if not refit:
        return ()
    damp = f", damp {plan.damp:g}" if plan.damp is not None else ""
    note = (f"reconstruct = {plan.reconstruct}{damp} on {len(refit)} layers: in the ONNX "
            "graph and hf exports (o_proj / down_proj weights and biases)")
    return (note,)


# ------------------------------------------------------------------ computations


def norm_params(shape: ModelShape, plan: Plan) -> int:
    """RMSNorm weights: one per kept block plus the final norm."""
    blocks = sum(int(not lp.attn_removed) + int(not lp.mlp_removed) for lp in plan.layers)
    return int(shape.hidden) * (blocks + 1)


def params_json(shape: ModelShape, plan: Plan, onnx: tuple[int, int] | None) -> dict[str, Any]:
    dense, pruned = param_count(shape, Plan.dense(shape)), param_count(shape, plan)
    weights_only = dataclasses.replace(shape, qkv_bias=False, o_bias=False)  # rank-2 only
    expected = param_count(weights_only, plan) - norm_params(shape, plan)
    return {"dense": dense, "pruned": pruned, "reduction": 1 - pruned / dense,
            "onnx_initializers": onnx[0] if onnx else None,
            "onnx_matrices": onnx[1] if onnx else None, "expected_matrices": expected,
            "agree": (onnx[1] == expected) if onnx else None}


def flops_json(shape: ModelShape, plan: Plan, seq_len: int) -> dict[str, Any]:
    dense = flops_per_token(shape, Plan.dense(shape), seq_len)
    pruned = flops_per_token(shape, plan, seq_len)
    return {"seq_len": seq_len, "dense": dense, "pruned": pruned, "reduction": 1 - pruned / dense}


def plan_summary(plan: Plan, shape: ModelShape) -> dict[str, int]:
    return {
        "attn_removed": sum(lp.attn_removed for lp in plan.layers),
        "mlp_removed": sum(lp.mlp_removed for lp in plan.layers),
        "heads_kept": sum(r["heads_kept"] for r in layer_rows(plan, shape)),
        "channels_kept": sum(r["channels_kept"] for r in layer_rows(plan, shape)),
    }


def layer_rows(plan: Plan, shape: ModelShape) -> list[dict[str, Any]]:
    rows = []
    for lp in plan.layers:
        heads = 0 if lp.attn_removed else len(lp.kept_heads or range(shape.n_heads))
        chans = 0 if lp.mlp_removed else len(lp.kept_channels or range(shape.intermediate))
        rows.append({
            "index": lp.index, "attn": "removed" if lp.attn_removed else "kept",
            "heads_kept": heads, "heads_total": shape.n_heads,
            "kv_heads_kept": 0 if lp.attn_removed else len(lp.kv_groups_kept(shape)),
            "mlp": "removed" if lp.mlp_removed else "kept",
            "channels_kept": chans, "channels_total": shape.intermediate,
        })
    return rows


def check_gates(gates: tuple[Gate, ...], pruned_params: int,
                results: dict[str, DatasetResult]) -> tuple[GateResult, ...]:
    return tuple(_check_ppl(g, results.get(g.dataset)) if isinstance(g, PerplexityGate)
                 else _check_params(g, pruned_params) for g in gates)


def _check_params(gate: ParamsGate, pruned: int) -> GateResult:
    held = pruned <= gate.max_params
    msg = f"params {pruned:,} {'<=' if held else '>'} {gate.max_params:,}"
    return GateResult("params", None, gate.max_params, pruned, held, gate.span.line, msg)


def _check_ppl(gate: PerplexityGate, result: DatasetResult | None) -> GateResult:
    if result is None or result.dense is None or result.pruned is None:
        return GateResult("perplexity", gate.dataset, float("nan"), None, False,
                          gate.span.line, f"perplexity on {gate.dataset} was not measured")
    dense, pruned = result.dense.ppl, result.pruned.ppl
    limits = []
    if gate.relative is not None:
        limits.append((gate.relative * dense, f"{gate.relative:g} x dense {dense:.3f}"))
    if gate.absolute is not None:
        limits.append((gate.absolute, f"{gate.absolute:g}"))
    limit, text = min(limits, key=lambda t: t[0]) if limits else (float("inf"), "inf")
    held = pruned <= limit
    msg = f"perplexity on {gate.dataset}: {pruned:.3f} {'<=' if held else '>'} {text}"
    return GateResult("perplexity", gate.dataset, limit, pruned, held, gate.span.line, msg)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("prunec", "torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


# ---------------------------------------------------------------------- rendering


def render(report: dict[str, Any], console: Any) -> None:
    """Print a report.json dict as rich tables: summary, perplexity, gates, per-layer."""
    from rich.table import Table

    console.print(_summary_table(report, Table))
    if report["perplexity"]:
        console.print(_ppl_table(report, Table))
    if report["gates"]:
        console.print(_gates_table(report, Table))
    console.print(_layers_table(report, Table))


def _summary_table(report: dict[str, Any], table_cls: Any) -> Any:
    p, f = report["params"], report["flops_per_token"]
    t = table_cls(title=f"prunec build: {report['spec']['name']} ({report['method']})")
    for col in ("", "dense", "pruned", "reduction"):
        t.add_column(col, justify="right" if col else "left")
    t.add_row("parameters", f"{p['dense']:,}", f"{p['pruned']:,}", f"{p['reduction']:.1%}")
    t.add_row(f"FLOPs/token @{f['seq_len']}", f"{f['dense']:,}", f"{f['pruned']:,}",
              f"{f['reduction']:.1%}")
    if p["onnx_matrices"] is not None:
        t.add_row("ONNX weight matrices", "", f"{p['onnx_matrices']:,}",
                  "agrees with plan" if p["agree"] else
                  f"plan says {p['expected_matrices']:,}")
    return t


def _ppl_table(report: dict[str, Any], table_cls: Any) -> Any:
    t = table_cls(title="perplexity (dense: PyTorch, pruned: ONNX Runtime)")
    for col in ("dataset", "sequences", "dense", "pruned", "ratio"):
        t.add_column(col, justify="left" if col == "dataset" else "right")
    for name, d in report["perplexity"].items():
        t.add_row(name, f"{d['samples']} x {d['seq_len']}",
                  f"{d['dense']['ppl']:.3f}" if d["dense"] else "-",
                  f"{d['pruned']['ppl']:.3f}" if d["pruned"] else "-",
                  f"{d['ratio']:.3f}" if d["ratio"] else "-")
    return t


def _gates_table(report: dict[str, Any], table_cls: Any) -> Any:
    t = table_cls(title="gates")
    t.add_column("line", justify="right")
    t.add_column("gate")
    t.add_column("result")
    for g in report["gates"]:
        t.add_row(str(g["line"]), g["message"], "[green]held[/]" if g["held"] else "[red]FAILED[/]")
    return t


def _layers_table(report: dict[str, Any], table_cls: Any) -> Any:
    t = table_cls(title="per layer")
    for col in ("layer", "attn heads kept", "heads removed", "KV heads", "MLP channels kept",
                "channels removed"):
        t.add_column(col, justify="right")
    for r in report["layers"]:
        attn = "[red]removed[/]" if r["attn"] == "removed" else (
            f"{r['heads_kept']}/{r['heads_total']}")
        mlp = "[red]removed[/]" if r["mlp"] == "removed" else (
            f"{r['channels_kept']}/{r['channels_total']}")
        t.add_row(str(r["index"]), attn, str(r["heads_total"] - r["heads_kept"]),
                  str(r["kv_heads_kept"]), mlp, str(r["channels_total"] - r["channels_kept"]))
    return t


def render_perplexity(report: dict[str, Any], console: Any) -> None:
    from rich.table import Table

    console.print(_ppl_table(report, Table))


def render_plan(plan: Plan, shape: ModelShape, console: Any) -> None:
    """The per-layer table of a plan and the decisions that made it."""
    from rich.table import Table

    data = {"layers": layer_rows(plan, shape)}
    console.print(_layers_table(data, Table))
    t = Table(title=f"decisions ({plan.method})")
    for col in ("step", "stage", "layer", "action", "score", "spec line"):
        t.add_column(col)
    for d in plan.decisions:
        t.add_row(str(d.step), d.stage, str(d.layer), d.action,
                  "-" if d.score is None else f"{d.score:.3f}",
                  "-" if d.spec_line is None else str(d.spec_line))
    console.print(t)
    dense, pruned = param_count(shape, Plan.dense(shape)), param_count(shape, plan)
    console.print(f"parameters: {dense:,} -> {pruned:,} ({1 - pruned / dense:.1%} removed)")
