"""The blocks' schemas and readers: ``key = value`` bodies -> IR nodes, with the defaults.

Each block's keys are listed once, in a ``Schema`` (``prunec.compiler.schema``): reader,
default, the spelling of the default in docs/language.md, and the kinds a key applies to.
Each ``*_block`` function takes the ``Fields`` of one block (sorted by ``schema.fields``:
unknown, duplicate and inapplicable keys are reported there) and returns the IR node with
defaults filled in. A field whose value is wrong falls back to its default so that lowering
goes on and reports every problem in one run; a block whose *required* key is missing
returns ``None``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

from prunec.compiler import names
from prunec.compiler import syntax as sx
from prunec.compiler.diagnostics import Diagnostic, Span
from prunec.compiler.ir import (
    DEFAULT_MAX_LEN,
    HALF_DTYPES,
    DataFormat,
    DatasetDecl,
    Device,
    DeviceKind,
    Distribution,
    DType,
    ExportDType,
    KeptScope,
    LayerSelector,
    ManualPlan,
    OnnxExport,
    PlanAction,
    ProbeMetric,
    ProbeMode,
    ProbePolicy,
    ProbeTarget,
    Provider,
    Reconstruct,
    Scope,
    SelectorKind,
    SliceRange,
    StaticMethod,
    StaticPrune,
    Steps,
    Target,
    WidthImportance,
)
from prunec.compiler.schema import Fields, Key, Schema, fields

E = TypeVar("E", bound=enum.Enum)
DTYPE_ALIASES = {"fp32": DType.FLOAT32, "fp16": DType.FLOAT16, "bf16": DType.BFLOAT16}
_NO_SPAN = Span("", 0, 0, 0, 0)


# ------------------------------------------------------------------------ readers


def _enum(kind: type[E], aliases: dict[str, E] | None = None
          ) -> Callable[[sx.Value, str, list[Diagnostic]], E | None]:
    def convert(v: sx.Value, key: str, sink: list[Diagnostic]) -> E | None:
        return sx.word(v, key, kind, sink, aliases)

    return convert


def _damp(v: sx.Value, key: str, sink: list[Diagnostic]) -> float | None:
    """``auto`` (None: ``ir.damp_for`` picks it from the calibration size) or a fraction."""
    if isinstance(v, sx.Word) and v.name == "auto":
        return None
    return sx.fraction(v, key, sink)


def _words(kind: type[E]) -> Callable[[sx.Value, str, list[Diagnostic]], tuple[E, ...] | None]:
    """A list of distinct words of ``kind`` (P0215 for an empty list or a repeat)."""
    def convert(v: sx.Value, key: str, sink: list[Diagnostic]) -> tuple[E, ...] | None:
        out = [sx.word(i, key, kind, sink) for i in sx.items(v)]
        if not out:
            sink.append(Diagnostic.error("P0215", f"'{key}' is an empty list", v.span))
        _duplicates([i for i in sx.items(v) if isinstance(i, sx.Word)], key, sink)
        got = tuple(o for o in out if o is not None)
        return got or None

    return convert


def _duplicates(words: list[sx.Word], key: str, sink: list[Diagnostic]) -> None:
    seen: set[str] = set()
    for w in words:
        if w.name in seen:
            sink.append(Diagnostic.error("P0215", f"'{w.name}' appears twice in '{key}'",
                                         w.span))
        seen.add(w.name)


def _selectors(v: sx.Value, key: str, sink: list[Diagnostic]) -> tuple[LayerSelector, ...]:
    return tuple(s for s in (sx.selector(i, key, sink) for i in sx.items(v)) if s)


def _slice(v: sx.Value, key: str, sink: list[Diagnostic]) -> SliceRange | None:
    if not isinstance(v, sx.RangeV):
        sx.wrong_type(v, key, "a range such as 0% .. 50%", sink)
        return None
    lo, hi = sx.fraction(v.lo, key, sink), sx.fraction(v.hi, key, sink)
    if lo is None or hi is None:
        return None
    if lo >= hi:
        sink.append(Diagnostic.error(
            "P0203", f"the slice {v.lo.raw} .. {v.hi.raw} is empty", v.span,
            "the start must be below the end"))
        return None
    return SliceRange(lo, hi, v.span)


def _distribution(v: sx.Value, key: str, sink: list[Diagnostic]) -> Distribution | None:
    if not isinstance(v, sx.RatioV) or len(v.parts) != 3:
        sx.wrong_type(v, key, "three shares blocks:mlp:heads such as 44:52:4", sink)
        return None
    parts = [sx.number(p, key, sink) for p in v.parts]
    if any(p is None for p in parts):
        return None
    b, m, h = (float(p or 0) for p in parts)
    if b + m + h <= 0:
        sink.append(Diagnostic.error("P0202", "the distribution's shares sum to 0", v.span))
        return None
    total = b + m + h
    return Distribution(b / total, m / total, h / total, v.span)


# ------------------------------------------------------------------------ schemas

def _device(v: sx.Value, key: str, sink: list[Diagnostic]) -> Device | None:
    """``auto``, ``cpu``, ``cuda`` (words) or ``"cuda:N"`` (a string: ``:`` is no word)."""
    text = v.name if isinstance(v, sx.Word) else v.text if isinstance(v, sx.Str) else None
    device = None if text is None else Device.parse(text, v.span)
    if device is None:
        sx.wrong_type(v, key, 'auto, cpu, cuda or "cuda:N"', sink)
    return device


DTYPE = Key("dtype", _enum(DType, DTYPE_ALIASES), DType.FLOAT32, "float32")
REVISION = Key[str | None]("revision", sx.string, None, applies=("hub",))
DEVICE = Key("device", _device, Device(), "auto")
MODEL = Schema("model", (DTYPE, REVISION, DEVICE), "models")

SAMPLES = Key("samples", sx.integer, 64, "64")
SEQ_LEN = Key("seq_len", sx.integer, 256, "256")
SEED = Key("seed", sx.integer, 0, "0")
SLICE = Key[SliceRange | None]("slice", _slice, None)
FIELD = Key[str | None]("field", sx.string, "text", '"text"', applies=("jsonl", "hf-disk"))
DATASET = Schema("dataset", (SAMPLES, SEQ_LEN, SEED, SLICE, FIELD), "datasets")

_WIDTH = ("magnitude", "wanda-sp", "flap")
_WHOLE = "give a fraction of all parameters: target = 20%"
PARAMS = Key[float | None]("params", sx.fraction, None)
MLP = Key[float | None]("mlp", sx.fraction, None, applies=_WIDTH, hint=_WHOLE)
HEADS = Key[float | None]("heads", sx.fraction, None, applies=_WIDTH, hint=_WHOLE)
BLOCKS = Key[float | None]("blocks", sx.fraction, None, applies=("blockpruner",), hint=_WHOLE)
TARGET_GROUP = Schema("target", (PARAMS, MLP, HEADS, BLOCKS))
STEP_MLP = Key[int | None]("mlp", sx.integer, None)
STEP_HEADS = Key[int | None]("heads", sx.integer, None, "1")
STEPS_GROUP = Schema("steps", (STEP_MLP, STEP_HEADS))

TARGET = Key[float | None]("target", sx.fraction, None, form="either")
DISTRIBUTION = Key[Distribution | None]("distribution", _distribution, None, "44:52:4",
                                        applies=("multipruner",))
STEPS = Key[None]("steps", None, None, applies=("multipruner",), form="group")
SCORE = Key[str | None]("score", sx.name, None)
PROTECT = Key[tuple[LayerSelector, ...]]("protect", _selectors, ())
REORDER = Key("reorder", sx.boolean, True, "on")
IMPORTANCE = Key[WidthImportance | None]("importance", _enum(WidthImportance), None,
                                         "magnitude", applies=("multipruner",))
SCOPE = Key("scope", _enum(Scope), Scope.PER_LAYER, "per-layer")
_REFIT = ("multipruner", "magnitude", "wanda-sp", "flap")
RECONSTRUCT = Key[Reconstruct | None](
    "reconstruct", _enum(Reconstruct), None, "off (bias for flap)", applies=_REFIT,
    hint="blockpruner removes whole blocks: no projection is left to refit")
DAMP = Key[float | None]("damp", _damp, None, "auto", applies=_REFIT)
PRUNE = Schema("prune", (TARGET, DISTRIBUTION, STEPS, SCORE, PROTECT, REORDER, IMPORTANCE,
                         SCOPE, RECONSTRUCT, DAMP))
PLAN = Schema("plan", (SCORE, RECONSTRUCT, DAMP))

RATIO = Key[float | None]("ratio", sx.fraction, None)
TARGETS = Key[tuple[ProbeTarget, ...]]("targets", _words(ProbeTarget), (ProbeTarget.MLP, ProbeTarget.HEADS),
              "[mlp, heads]")
SKIP = Key[tuple[LayerSelector, ...]]("skip", _selectors, (LayerSelector(SelectorKind.RANGE, 0, 2, _NO_SPAN),),
           "layers[0..2]")
MODE = Key("mode", _enum(ProbeMode), ProbeMode.PROBE, "probe")
TOKENS = Key("tokens", sx.fraction, 0.5, "50%")
PROBE_SAMPLES = Key("samples", sx.fraction, 0.05, "5%")
MOMENTUM = Key("momentum", sx.fraction, 0.99, "0.99")
HISTORY = Key[str | None]("history", sx.name, None)
METRIC = Key("metric", _enum(ProbeMetric), ProbeMetric.PPSP, "ppsp")
ROUND = Key("round", sx.integer, 64, "64")
COMPENSATE = Key("compensate", sx.boolean, False, "off")
KEPT = Key("kept", _enum(KeptScope), KeptScope.PER_SEQUENCE, "per-sequence")
PROBE = Schema("probe", (RATIO, TARGETS, SKIP, MODE, TOKENS, PROBE_SAMPLES, MOMENTUM, HISTORY,
                         METRIC, ROUND, COMPENSATE, KEPT))

OPSET = Key("opset", sx.integer, 18, "18")
GATING = Key("gating", sx.boolean, False)  # derived: on when the spec has a probe block
PROVIDERS = Key[tuple[Provider, ...]]("providers", _words(Provider), (Provider.CUDA, Provider.CPU), "[cuda, cpu]")
FUSE = Key("fuse", sx.boolean, False)  # derived: on unless gated
MAX_LEN = Key("max_len", sx.integer, DEFAULT_MAX_LEN, str(DEFAULT_MAX_LEN))
KV_CACHE = Key("kv_cache", sx.boolean, True, "on")
EXPORT_DTYPE = Key("dtype", _enum(ExportDType), ExportDType.FLOAT32, "float32")
ONNX = Schema("export onnx", (OPSET, GATING, PROVIDERS, FUSE, MAX_LEN, KV_CACHE, EXPORT_DTYPE))
HF = Schema("export hf", ())

SCHEMAS = (MODEL, DATASET, PRUNE, TARGET_GROUP, STEPS_GROUP, PLAN, PROBE, ONNX, HF)


# --------------------------------------------------------------------------- model


def model_settings(f: Fields, sink: list[Diagnostic]) -> tuple[DType, Device]:
    """The model block's dtype and device; a half dtype on ``device = cpu`` is P0229 (torch
    on this CPU runs bfloat16 many times slower than float32 and lacks float16 matmuls)."""
    dtype, device = f.get(DTYPE, sink), f.get(DEVICE, sink)
    if dtype in HALF_DTYPES and device.kind is DeviceKind.CPU:
        span = f.attrs["dtype"].span
        sink.append(Diagnostic.error(
            "P0229", f"dtype {dtype.value} needs a CUDA device, not device = cpu", span,
            "use dtype = float32 on the CPU, or device = cuda / auto"))
    return dtype, device


# ------------------------------------------------------------------------ datasets


def dataset_block(name: str, fmt: DataFormat, paths: tuple[str, ...], f: Fields,
                  sink: list[Diagnostic]) -> DatasetDecl:
    field = None if fmt is DataFormat.TEXT else f.get(FIELD, sink)
    return DatasetDecl(name, fmt, paths, field, f.get(SAMPLES, sink), f.get(SEQ_LEN, sink),
                       f.get(SEED, sink), f.get(SLICE, sink), f.span)


def dataset_paths(v: sx.Value, sink: list[Diagnostic]) -> tuple[str, ...]:
    out = [sx.string(item, "dataset path", sink) for item in sx.items(v)]
    if not out:
        sink.append(Diagnostic.error("P0106", "a dataset needs at least one path", v.span))
    return tuple(p for p in out if p is not None)


# -------------------------------------------------------------------- static prune


def prune_block(method: StaticMethod | None, f: Fields, sink: list[Diagnostic]
                ) -> StaticPrune | None:
    target = _target(f, method, sink)
    steps = _steps(f.groups.get("steps"), sink)
    reorder = f.get(REORDER, sink)
    importance = f.get(IMPORTANCE, sink)
    if importance is not None and not reorder:
        sink.append(Diagnostic.error(
            "P0211", "'importance' orders the reorder, but reorder = off",
            f.attrs["importance"].span, "drop importance, or set reorder = on"))
    if target is None or method is None:
        return None
    return StaticPrune(method, target, f.get(DISTRIBUTION, sink), steps, f.get(SCORE, sink),
                       f.get(PROTECT, sink), reorder, f.get(SCOPE, sink), f.span, importance,
                       f.get(RECONSTRUCT, sink), f.get(DAMP, sink))


def _target(f: Fields, method: StaticMethod | None, sink: list[Diagnostic]) -> Target | None:
    group = f.groups.get("target")
    if "target" in f.attrs:
        params = f.get(TARGET, sink)
        return None if params is None else Target(params, None, None, None,
                                                  f.attrs["target"].span)
    if group is None:
        sink.append(Diagnostic.error(
            "P0106", "the prune block needs a target", f.span,
            "write target = 20% (of all parameters) or target { mlp = 30%, heads = 25% }"))
        return None
    g = fields(group.attrs, TARGET_GROUP, "target", method and method.value, group.span, sink)
    if not group.attrs:
        sink.append(Diagnostic.error("P0106", "the target group is empty", group.span))
        return None
    t = Target(g.get(PARAMS, sink), g.get(MLP, sink), g.get(HEADS, sink), g.get(BLOCKS, sink),
               group.span)
    if t.params is not None and (t.mlp, t.heads, t.blocks) != (None, None, None):
        sink.append(Diagnostic.error(
            "P0211", "give either params or per-dimension ratios, not both", group.span))
    return t


def _steps(group: sx.Group | None, sink: list[Diagnostic]) -> Steps | None:
    if group is None:
        return None
    g = fields(group.attrs, STEPS_GROUP, "steps", None, group.span, sink)
    return Steps(g.get(STEP_MLP, sink), g.get(STEP_HEADS, sink), group.span)


def plan_settings(actions: tuple[PlanAction, ...], f: Fields, sink: list[Diagnostic]
                  ) -> ManualPlan:
    """A manual ``plan { ... }``: its actions and its ``score``/``reconstruct``/``damp``."""
    return ManualPlan(actions, f.span, f.get(RECONSTRUCT, sink) or Reconstruct.OFF,
                      f.get(DAMP, sink), f.get(SCORE, sink))


# ------------------------------------------------------------------------- probe


def probe_block(f: Fields, sink: list[Diagnostic]) -> ProbePolicy | None:
    ratio = f.get(RATIO, sink)
    skip = f.get(SKIP, sink) if "skip" in f.attrs else tuple(
        replace(s, span=f.span) for s in SKIP.default)
    policy = ProbePolicy(
        ratio=ratio or 0.0, targets=f.get(TARGETS, sink), skip=skip, mode=f.get(MODE, sink),
        token_fraction=f.get(TOKENS, sink), sample_fraction=f.get(PROBE_SAMPLES, sink),
        momentum=f.get(MOMENTUM, sink), history_dataset=f.get(HISTORY, sink),
        metric=f.get(METRIC, sink), round_to=f.get(ROUND, sink), span=f.span,
        compensate=f.get(COMPENSATE, sink), kept=f.get(KEPT, sink),
    )
    if "ratio" not in f.attrs:
        sink.append(Diagnostic.error("P0106", "the probe block needs a ratio", f.span,
                                     "write ratio = 40%"))
    return None if ratio is None else policy


# ------------------------------------------------------------------------ exports


def onnx_block(file: str, f: Fields, sink: list[Diagnostic]) -> OnnxExport:
    """An ``export onnx`` block; gating and fuse are settled by lowering (whole spec)."""
    return OnnxExport(file=file, opset=f.get(OPSET, sink), gating=f.get(GATING, sink),
                      providers=f.get(PROVIDERS, sink), span=f.span, fuse=f.get(FUSE, sink),
                      max_len=f.get(MAX_LEN, sink), kv_cache=f.get(KV_CACHE, sink),
                      dtype=f.get(EXPORT_DTYPE, sink))


IMPLICIT_PROVIDERS = (Provider.CPU,)  # what the build always used for a spec without export


def implicit_onnx(span: Span) -> OnnxExport:
    """The export a spec gets when it names none: the block's defaults, CPU only."""
    return OnnxExport(file=names.DEFAULT_ONNX_FILE, opset=OPSET.default, gating=GATING.default,
                      providers=IMPLICIT_PROVIDERS, span=span, fuse=FUSE.default,
                      max_len=MAX_LEN.default, kv_cache=KV_CACHE.default,
                      dtype=EXPORT_DTYPE.default)
