"""Lowering: the Lark parse tree of a spec -> the typed IR (``prunec.compiler.ir.Spec``).

One transformer method per grammar rule (``grammar/prune.lark``), each returning a surface
value (``prunec.compiler.syntax``) or an IR node with the ``Span`` of its source text.
Problems are collected in ``Lower.sink`` (never raised) so one run reports all of them;
a faulty field falls back to its default. Invariants of the result (together with
``prunec.compiler.checks``): every node has a span in the spec's file; blocks that may
appear once appear at most once; dataset names are unique (a dict by name: linear in the
number of datasets); every spec has an ``OnnxExport`` (the implicit ``export onnx
"model.onnx"`` when it names none). Block keys are read through the schemas of
``prunec.compiler.blocks``. A spec without a model gets a placeholder demo model *and* a
P0110 error, so later checks still run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from lark import Token, Transformer, Tree, v_args
from lark.tree import Meta

from prunec.compiler import blocks as bl
from prunec.compiler import names
from prunec.compiler import syntax as sx
from prunec.compiler.diagnostics import Diagnostic, Span
from prunec.compiler.ir import (
    BlockKind,
    DataFormat,
    DatasetDecl,
    DType,
    Export,
    Gate,
    HfExport,
    KeepChannels,
    KeepHeads,
    LayerSelector,
    ManualPlan,
    ModelDecl,
    ModelSource,
    OnnxExport,
    ParamsGate,
    PerplexityGate,
    PlanAction,
    ProbePolicy,
    RemoveBlock,
    SelectorKind,
    Spec,
    StaticMethod,
    StaticPrune,
    fusable,
)
from prunec.compiler.schema import Entries, Fields, Schema, fields

ONCE = ("model", "prune", "plan", "probe", "gates")
TOP_KEYS = ("name", "output", "evaluate")


@v_args(meta=True)
class Lower(Transformer[Token, Any]):
    """Parse tree -> IR. Read ``sink`` afterwards for the problems found."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file
        self.sink: list[Diagnostic] = []
        self._explicit_gating: set[Span] = set()
        self._explicit_fuse: set[Span] = set()
        self.model_known = True  # False when the model block is missing or unreadable

    # ------------------------------------------------------------------ helpers
    def span(self, meta: Meta) -> Span:
        if getattr(meta, "empty", True):
            return Span.unknown(self.file)
        return Span(self.file, meta.line, meta.column, meta.end_line, meta.end_column)

    def tspan(self, tok: Token) -> Span:
        return Span(self.file, tok.line or 1, tok.column or 1, tok.end_line or 1,
                    tok.end_column or 1)

    def word(self, tok: Token) -> sx.Word:
        return sx.Word(str(tok), self.tspan(tok))

    # ------------------------------------------------------------------- values
    def string(self, meta: Meta, c: list[Token]) -> sx.Str:
        span = self.span(meta)
        return sx.Str(sx.unescape(str(c[0]), span, self.sink), span)

    def number(self, meta: Meta, c: list[Token]) -> sx.Num:
        return sx.quantity(str(c[0]), self.span(meta))

    def ident(self, meta: Meta, c: list[Token]) -> sx.Word:
        return sx.Word(str(c[0]), self.span(meta))

    def array(self, meta: Meta, c: list[sx.Scalar]) -> sx.ListV:
        return sx.ListV(tuple(c), self.span(meta))

    def interval(self, meta: Meta, c: list[sx.Num]) -> sx.RangeV:
        return sx.RangeV(c[0], c[1], self.span(meta))

    def ratio(self, meta: Meta, c: list[sx.Num]) -> sx.RatioV:
        return sx.RatioV(tuple(c), self.span(meta))

    def signed(self, meta: Meta, c: list[Token | None]) -> int | None:
        tok = c[1]
        assert tok is not None
        got = sx.integer(sx.quantity(str(tok), self.span(meta)), "layer index", self.sink)
        return None if got is None else (-got if c[0] is not None else got)

    def sel_all(self, meta: Meta, c: list[Any]) -> LayerSelector:
        return LayerSelector(SelectorKind.ALL, None, None, self.span(meta))

    def sel_index(self, meta: Meta, c: list[int | None]) -> LayerSelector:
        return LayerSelector(SelectorKind.INDEX, c[0] or 0, None, self.span(meta))

    def sel_slice(self, meta: Meta, c: list[int | None]) -> LayerSelector:
        return LayerSelector(SelectorKind.SLICE, c[0], c[1], self.span(meta))

    def sel_range(self, meta: Meta, c: list[int | None]) -> LayerSelector:
        return LayerSelector(SelectorKind.RANGE, c[0], c[1], self.span(meta))

    # ------------------------------------------------------------------- bodies
    def attr(self, meta: Meta, c: list[Any]) -> sx.Attr:
        return sx.Attr(str(c[0]), c[1], self.span(meta))

    def group(self, meta: Meta, c: list[Any]) -> sx.Group:
        return sx.Group(str(c[0]), tuple(c[1:]), self.span(meta))

    def body(self, meta: Meta, c: list[Any]) -> tuple[Entries, Span]:
        return tuple(c), self.span(meta)

    def _fields(self, body: tuple[Entries, Span] | None, meta: Meta, schema: Schema,
                kind: str | None = None, where: str | None = None) -> Fields:
        entries = body[0] if body is not None else ()
        return fields(entries, schema, where or f"the {schema.block} block", kind,
                      self.span(meta), self.sink)

    # ------------------------------------------------------------------- blocks
    def model(self, meta: Meta, c: list[Any]) -> ModelDecl:
        kind, loc_tok, body = c
        source = sx.word(self.word(kind), "model kind", ModelSource, self.sink)
        f = self._fields(body, meta, bl.MODEL, source and source.value)
        dtype, device = bl.model_settings(f, self.sink)
        revision = f.get(bl.REVISION, self.sink)
        location = None if loc_tok is None else sx.unescape(str(loc_tok), self.tspan(loc_tok),
                                                            self.sink)
        if source is None:
            self.model_known = False  # no shape checks against a model we cannot name
            source = ModelSource.DEMO
        else:
            self._check_location(source, location, meta)
        return ModelDecl(source, location, dtype, self.span(meta), revision, device)

    def _check_location(self, source: ModelSource, location: str | None, meta: Meta) -> None:
        if source is ModelSource.DEMO and location is not None:
            self._error("P0111", "the demo model takes no location", self.span(meta),
                        'use model hf "<dir>", model hub "<id>" or model gguf "<file>"')
        elif source is not ModelSource.DEMO and location is None:
            self._error("P0111", f"model {source.value} needs a location", self.span(meta),
                        f'write model {source.value} "<path or id>"')

    def dataset(self, meta: Meta, c: list[Any]) -> DatasetDecl:
        name, fmt_tok, paths_v, body = c
        fmt = sx.word(self.word(fmt_tok), "dataset format", DataFormat, self.sink,
                      {"hf_disk": DataFormat.HF_DISK})
        paths = bl.dataset_paths(paths_v, self.sink)
        f = self._fields(body, meta, bl.DATASET, fmt and fmt.value, f"dataset {name}")
        return bl.dataset_block(str(name), fmt or DataFormat.TEXT, paths, f, self.sink)

    def prune(self, meta: Meta, c: list[Any]) -> StaticPrune | None:
        method = sx.word(self.word(c[0]), "method", StaticMethod, self.sink)
        f = self._fields(c[1], meta, bl.PRUNE, method and method.value)
        return bl.prune_block(method, f, self.sink)

    def probe(self, meta: Meta, c: list[Any]) -> ProbePolicy | None:
        return bl.probe_block(self._fields(c[0], meta, bl.PROBE), self.sink)

    def export(self, meta: Meta, c: list[Any]) -> Export | None:
        kind, loc_tok, body = c
        loc = None if loc_tok is None else sx.unescape(str(loc_tok), self.tspan(loc_tok),
                                                       self.sink)
        if str(kind) == "hf":
            self._fields(body, meta, bl.HF, where="export hf")
            return HfExport(names.DEFAULT_HF_DIR if loc is None else loc, self.span(meta))
        if str(kind) != "onnx":
            self._error("P0112", f"unknown export '{kind}'", self.tspan(kind),
                        sx.suggest(str(kind), ["onnx", "hf"]))
            return None
        return self._onnx(names.DEFAULT_ONNX_FILE if loc is None else loc, body, meta)

    def _onnx(self, file: str, body: Any, meta: Meta) -> OnnxExport:
        f = self._fields(body, meta, bl.ONNX, where="export onnx")
        if "gating" in f.attrs:
            self._explicit_gating.add(self.span(meta))
        if "fuse" in f.attrs:
            self._explicit_fuse.add(self.span(meta))
        return bl.onnx_block(file, f, self.sink)

    # --------------------------------------------------------------------- plan
    def plan_setting(self, meta: Meta, c: list[Any]) -> sx.Attr:
        return self.attr(meta, c)

    def plan(self, meta: Meta, c: list[PlanAction | sx.Attr | None]) -> ManualPlan:
        attrs = tuple(a for a in c if isinstance(a, sx.Attr))
        actions = tuple(a for a in c if a is not None and not isinstance(a, sx.Attr))
        f = fields(attrs, bl.PLAN, "the plan block", None, self.span(meta), self.sink)
        return bl.plan_settings(actions, f, self.sink)

    def remove(self, meta: Meta, c: list[Any]) -> RemoveBlock | None:
        sel, what = c
        block = sx.word(self.word(what), "block", BlockKind, self.sink)
        return None if block is None else RemoveBlock(sel, block, self.span(meta))

    def keep_count(self, meta: Meta, c: list[Any]) -> PlanAction | None:
        n_tok, what, sel = c
        n = sx.integer(sx.quantity(str(n_tok), self.tspan(n_tok)), "keep", self.sink)
        return self._keep(str(what), self.tspan(what), sel, n, None, meta)

    def keep_list(self, meta: Meta, c: list[Any]) -> PlanAction | None:
        what, lst, sel = c
        idx = [sx.integer(i, "keep", self.sink) for i in lst.items]
        if not idx:
            self._error("P0215", "the list of indices to keep is empty", lst.span,
                        "to drop a whole block write remove layers[i].mlp|attn")
        if any(i is None for i in idx):
            return None
        return self._keep(str(what), self.tspan(what), sel, None,
                          tuple(i for i in idx if i is not None), meta)

    def _keep(self, what: str, wspan: Span, sel: LayerSelector, n: int | None,
              idx: tuple[int, ...] | None, meta: Meta) -> PlanAction | None:
        if what not in ("channels", "heads"):
            self._error("P0104", f"cannot keep '{what}'", wspan,
                        sx.suggest(what, ["channels", "heads"]))
            return None
        if n is None and idx is None:
            return None
        kind = KeepChannels if what == "channels" else KeepHeads
        return kind(sel, n, idx, self.span(meta))

    # -------------------------------------------------------------------- gates
    def gates(self, meta: Meta, c: list[Gate | None]) -> GateBlock:
        return GateBlock(tuple(g for g in c if g is not None), self.span(meta))

    def bound(self, meta: Meta, c: list[Token | None]) -> tuple[sx.Num, bool]:
        assert c[0] is not None
        return sx.quantity(str(c[0]), self.span(meta)), c[1] is not None

    def perplexity_gate(self, meta: Meta, c: list[Any]) -> PerplexityGate | None:
        name, bounds = str(c[0]), c[1:]
        rel: list[float | None] = []
        ab: list[float | None] = []
        for num, dense in bounds:
            (rel if dense else ab).append(self._bound(num, dense))
        if len(rel) > 1 or len(ab) > 1:
            self._error("P0102", "a perplexity gate repeats a bound", self.span(meta),
                        "give at most one `x dense` bound and one absolute bound")
        if None in rel or None in ab:
            return None
        return PerplexityGate(name, rel[0] if rel else None, ab[0] if ab else None,
                              self.span(meta))

    def _bound(self, num: sx.Num, dense: bool) -> float | None:
        got: float | None
        if dense:
            got = sx.multiplier(num, "perplexity", self.sink)
        elif num.unit == "x":
            self._error("P0103", f"{num.raw} is relative: say relative to what", num.span,
                        f"write {num.raw} dense")
            return None
        else:
            got = sx.number(num, "perplexity", self.sink)
        if got is not None and got <= 0:
            self._error("P0202", "a perplexity bound must be positive", num.span)
            return None
        return got

    def params_gate(self, meta: Meta, c: list[Token]) -> ParamsGate | None:
        n = sx.count(sx.quantity(str(c[0]), self.tspan(c[0])), "params", self.sink)
        return None if n is None else ParamsGate(n, self.span(meta))

    # -------------------------------------------------------------------- start
    def start(self, meta: Meta, c: list[Any]) -> Spec:
        parts = _Parts()
        for item in c:
            if item is not None:
                self._collect(parts, item)
        return self._spec(parts, meta)

    def __default__(self, data: Any, children: Any, meta: Any) -> Any:  # pragma: no cover
        return Tree(data, children, meta)

    def _error(self, code: str, msg: str, span: Span, hint: str | None = None) -> None:
        self.sink.append(Diagnostic.error(code, msg, span, hint))

    def _collect(self, parts: _Parts, item: Any) -> None:
        span: Span = item.span
        kind = _kind_of(item)
        if kind in ONCE and kind in parts.seen:
            self._error("P0107", f"{kind} declared twice", span,
                        f"the first is at line {parts.seen[kind].line}")
            return
        if kind is not None:
            parts.seen.setdefault(kind, span)
        parts.add(item, self)

    def _spec(self, p: _Parts, meta: Meta) -> Spec:
        model = p.model
        if model is None:
            self._error("P0110", "the spec declares no model", Span.unknown(self.file),
                        "add `model demo` (SmolLM2-135M-Instruct) or model hf \"<dir>\"")
            model = ModelDecl(ModelSource.DEMO, None, DType.FLOAT32, Span.unknown(self.file))
            self.model_known = False
        exports = tuple(self._export_defaults(e, p.probe)
                        for e in self._with_onnx(p.exports, self.span(meta)))
        return Spec(
            name=p.name or Path(self.file).stem,
            file=self.file, model=model, datasets=tuple(p.datasets.values()), static=p.static,
            plan=p.plan, probe=p.probe, evaluate=tuple(p.evaluate), gates=tuple(p.gates),
            exports=exports, output=p.output, span=self.span(meta),
        )

    def _with_onnx(self, exports: list[Export], span: Span) -> list[Export]:
        """Every spec exports ONNX: without an ``export onnx`` block, the implicit one (its
        span is the whole spec's)."""
        if any(isinstance(e, OnnxExport) for e in exports):
            return exports
        return [bl.implicit_onnx(span), *exports]

    def _export_defaults(self, e: Export, probe: ProbePolicy | None) -> Export:
        """Defaults that depend on the whole spec: gating = on with a probe block; fuse = on
        where the graph can be fused (``ir.fusable``: static and prompt-mode graphs)."""
        if not isinstance(e, OnnxExport):
            return e
        if e.span not in self._explicit_gating:
            e = replace(e, gating=probe is not None)
        if e.span not in self._explicit_fuse:
            e = replace(e, fuse=fusable(e.gating, probe))
        return e


def _kind_of(item: Any) -> str | None:
    for kind, types in (("model", ModelDecl), ("prune", StaticPrune), ("plan", ManualPlan),
                        ("probe", ProbePolicy)):
        if isinstance(item, types):
            return kind
    return "gates" if isinstance(item, GateBlock) else None


@dataclass(frozen=True)
class GateBlock:
    """The gates of one ``gates { ... }`` block (an intermediate of lowering, not IR)."""

    gates: tuple[Gate, ...]
    span: Span


class _Parts:
    """The top-level items of a spec as they are collected (mutable; lowering only)."""

    def __init__(self) -> None:
        self.seen: dict[str, Span] = {}
        self.model: ModelDecl | None = None
        self.datasets: dict[str, DatasetDecl] = {}  # by name, in declaration order
        self.static: StaticPrune | None = None
        self.plan: ManualPlan | None = None
        self.probe: ProbePolicy | None = None
        self.gates: list[Gate] = []
        self.exports: list[Export] = []
        self.name: str | None = None
        self.output: str | None = None
        self.evaluate: list[str] = []
        self.top_keys: set[str] = set()

    def add(self, item: Any, low: Lower) -> None:
        if isinstance(item, ModelDecl):
            self.model = item
        elif isinstance(item, DatasetDecl):
            self._dataset(item, low)
        elif isinstance(item, StaticPrune):
            self.static = item
        elif isinstance(item, ManualPlan):
            self.plan = item
        elif isinstance(item, ProbePolicy):
            self.probe = item
        elif isinstance(item, GateBlock):
            self.gates.extend(item.gates)
        elif isinstance(item, (OnnxExport, HfExport)):
            self.exports.append(item)
        elif isinstance(item, sx.Attr):
            self._top_attr(item, low)

    def _dataset(self, d: DatasetDecl, low: Lower) -> None:
        first = self.datasets.get(d.name)
        if first is not None:
            low._error("P0108", f"dataset '{d.name}' is declared twice", d.span,
                       f"the first is at line {first.span.line}")
            return
        self.datasets[d.name] = d

    def _check_name(self, span: Span, low: Lower) -> None:
        problem = None if self.name is None else names.name_problem(self.name)
        if problem:
            low._error("P0223", f"name: {problem}", span,
                       "use letters, digits, '.', '_' and '-' (it names build/<name>)")
            self.name = None

    def _top_attr(self, a: sx.Attr, low: Lower) -> None:
        if a.key not in TOP_KEYS:
            low._error("P0101", f"unknown top-level key '{a.key}'", a.span,
                       sx.suggest(a.key, list(TOP_KEYS)))
            return
        if a.key in self.top_keys:
            low._error("P0102", f"'{a.key}' is given twice", a.span)
            return
        self.top_keys.add(a.key)
        if a.key == "evaluate":
            names = (sx.name(v, "evaluate", low.sink) for v in sx.items(a.value))
            self.evaluate = [n for n in names if n is not None]
        elif a.key == "name":
            self.name = sx.string(a.value, "name", low.sink)
            self._check_name(a.value.span, low)
        else:
            self.output = sx.string(a.value, "output", low.sink)
