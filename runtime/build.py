"""``prunec build``: spec -> model -> plan -> pruned graph -> ONNX artifact + report.

Stages, in order (each timed in ``report.json``'s ``timings_s``):
  load_model -> load_data -> plan -> evaluate_dense (PyTorch, before any pruning)
  -> compile (graph passes + ONNX export, into the temporary artifact directory)
  -> evaluate_pruned (onnxruntime) -> gates -> write -> publish.
The plan is the spec's manual plan (``compiler.manual``, importance from weight magnitude),
else its static method (``prunec.passes.methods``), else dense. Compiling is
``graph_compile`` (``passes.pipeline.prune_graph`` + ``runtime.export.export_onnx``); with a
probe policy and ``gating = on`` it is ``gated_compile`` instead (the static plan applied to
the module, H calibrated on the history dataset, ``runtime.gated.export_gated_onnx``), and
the pruned perplexity then runs with H carried from batch to batch, reset per dataset.
Dense perplexity is always PyTorch on the unpruned model; pruned is always onnxruntime on
the artifact itself.

Artifact directory (see ``prunec.runtime.artifact`` for the atomic protocol)::

    DIR/model.onnx (+ model.onnx.data)   the pruned model: input_ids int64 [batch, seq] -> logits
    DIR/model.gating.json, model.history.npz   (gated only) manifest and initial H
    DIR/tokenizer.json, tokenizer_config.json, ...   tokenizer.save_pretrained
    DIR/plan.json                          Plan.to_json()
    DIR/plan.lock.json                     (static methods) the lock: rebuild with --lock, no search
    DIR/<hf dir>/                          (``export hf``) pruned PyTorch model, see hf_export
    DIR/report.json                        BuildReport.to_json(), written last

Output directory: ``-o DIR``, else the spec's ``output`` relative to the spec's directory,
else ``build/<spec name>`` relative to the current directory.

Gates: when a gate fails, the build exits 1 and the artifact is NOT published: an existing
artifact at DIR stays as it was, and the failing report is written next to it as
``DIR.failed-report.json`` (report.json plus the plan under ``"plan"``; replaced atomically;
deleted by the next successful build).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import CompileError, Diagnostic, Span
from prunec.compiler.ir import ModelShape, OnnxExport, Provider, Spec
from prunec.compiler.plan import Plan
from prunec.runtime.artifact import ArtifactDir, checkpoint, replaceable
from prunec.runtime.report import BuildReport, DatasetResult, check_gates

DEFAULT_EXPORT_SEQ_LEN = 256


@dataclass(frozen=True)
class CompileJob:
    """What the compiler backend turns into ``path`` (an ONNX file)."""

    model: Any  # the loaded (dense) nn.Module; backends must not modify it
    plan: Plan
    shape: ModelShape
    path: Path
    opset: int
    span: Span  # the spec's model line, for diagnostics about the model
    probe: Any = None  # ProbePolicy when the ONNX graph carries probe gating
    history_data: Any = None  # LongTensor [N, T]: initialises the probe history H
    max_len: int = 0  # longest sequence the gated graph must support
    biases: Any = None  # {layer: LayerBias}: FLAP's output-bias compensation, or None
    fuse: bool = False  # onnxruntime fused kernels in the static graph (``export.fuse``)


CompileFn = Callable[[CompileJob], dict[str, Any]]


@dataclass(frozen=True)
class BuildOptions:
    output: Path | None = None  # -o DIR
    quiet: bool = False
    lock: Path | None = None  # --lock plan.lock.json: apply a locked plan, no search
    batch_size: int = 4  # sequences per forward pass when evaluating
    resume: bool = False  # --resume: continue a search from its last completed step


@dataclass(frozen=True)
class BuildResult:
    report: dict[str, Any]
    artifact: Path | None  # None when a gate failed
    failed_report: Path | None  # DIR.failed-report.json when a gate failed

    @property
    def passed(self) -> bool:
        return bool(self.report["passed"])


@dataclass
class Timings:
    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start
        checkpoint(name)


# ------------------------------------------------------------------ the compiler


def graph_compile(job: CompileJob) -> dict[str, Any]:
    """The real backend: torch.fx passes (``prunec.passes.pipeline``) then ONNX export."""
    from prunec.passes.pipeline import prune_graph
    from prunec.runtime.export import ExportConfig, export_onnx

    graph, pass_report = prune_graph(with_biases(job.model, job.biases), job.plan, job.shape,
                                     job.span)
    info = export_onnx(graph, job.path, config=ExportConfig(opset=job.opset, fuse=job.fuse))
    export = {k: v for k, v in _jsonable(info).items() if k != "path"}
    return {"passes": _jsonable(pass_report), "export": export}


def gated_compile(job: CompileJob) -> dict[str, Any]:
    """Probe gating: the static plan applied to the module (``passes.reference``), H
    calibrated on the history dataset, then ``runtime.gated.export_gated_onnx``."""
    import copy

    from prunec.passes.probe import calibrate_history
    from prunec.passes.reference import apply_plan_
    from prunec.runtime.gated import export_gated_onnx

    model = job.model
    if job.plan != Plan.dense(job.shape, job.plan.method):
        model = apply_plan_(copy.deepcopy(job.model), job.plan, job.shape)
    model = with_biases(model, job.biases, copied=model is not job.model)
    history = calibrate_history(model, job.shape, job.probe, job.history_data, job.max_len)
    info = export_gated_onnx(model, job.shape, job.probe, history, job.path, opset=job.opset)
    gated = {k: v for k, v in _jsonable(info).items() if not k.endswith("_path")}
    return {"gated": gated}


def with_biases(model: Any, biases: Any, copied: bool = False) -> Any:
    """``model`` with FLAP's output biases added to o_proj / down_proj (a copy unless
    ``copied``; the bias is on the output side, so width passes leave it whole)."""
    if not biases:
        return model
    import copy

    from prunec.passes.reference import apply_output_biases_

    return apply_output_biases_(model if copied else copy.deepcopy(model), biases)


def _jsonable(obj: Any) -> Any:
    """JSON data of a pass report / export info (``to_json()`` if it has one; modules and
    other non-data values become their type name, never their full repr)."""
    if hasattr(obj, "to_json"):
        return json.loads(json.dumps(obj.to_json(), default=str))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    return type(obj).__name__


# ---------------------------------------------------------------- small helpers


def output_dir(spec: Spec, spec_dir: Path, override: Path | None) -> Path:
    if override is not None:
        return override
    if spec.output:
        return Path(spec_dir) / str(spec.output)
    return Path("build") / str(spec.name)


def resume_path(out: Path) -> Path:
    """Where a search keeps its state between steps: beside the artifact, never inside it."""
    return out.with_name(f".{out.name}.search-state.json")


def failed_report_path(out: Path) -> Path:
    return out.parent / f"{out.name}.failed-report.json"


def onnx_settings(spec: Spec) -> OnnxExport:
    found = spec.onnx_export()
    return found or OnnxExport("model.onnx", 18, False, (Provider.CPU,), spec.span, fuse=True)


def unsupported(spec: Spec) -> list[Diagnostic]:
    """Spec features this build cannot honour yet (errors on their spans)."""
    out = []
    if spec.probe is not None and history_dataset(spec) is None:
        out.append(Diagnostic.error(
            "P0408", "the probe policy needs a dataset to initialise its history",
            spec.probe.span, "set `history = <dataset>` (or a static method's `score`)"))
    return out


def history_dataset(spec: Spec) -> str | None:
    """The dataset that initialises the probe history: ``history``, else the static score."""
    if spec.probe is None:
        return None
    if spec.probe.history_dataset:
        return str(spec.probe.history_dataset)
    return str(spec.static.score_dataset) if spec.static and spec.static.score_dataset else None


def gated(spec: Spec) -> bool:
    return spec.probe is not None and onnx_settings(spec).gating


def write_hf_exports(spec: Spec, loaded: Any, plan: Plan, tmp: Path) -> None:
    """``export hf "DIR"``: the pruned PyTorch model (see ``prunec.runtime.hf_export``)."""
    from prunec.compiler.ir import HfExport
    from prunec.runtime.hf_export import export_hf

    for e in (e for e in spec.exports if isinstance(e, HfExport)):
        export_hf(loaded.model, loaded.tokenizer, plan, tmp / e.directory)


def method_biases(method: Any) -> Any:
    """The method's output-bias compensation ({layer: LayerBias}), or None."""
    return getattr(method, "biases", None) or None


def bias_notes(spec: Spec, method: Any) -> tuple[str, ...]:
    from prunec.compiler.ir import HfExport

    biases = method_biases(method)
    if biases is None:
        return ()
    notes = [(f"output-bias compensation on {len(biases)} layers is in the ONNX graph "
             "(o_proj / down_proj biases)")]
    if any(isinstance(e, HfExport) for e in spec.exports):
        notes.append("the hf export does not carry the output-bias compensation")
    return tuple(notes)


def write_plan_pictures(method: Any, plan: Plan, shape: Any, tmp: Path) -> None:
    """plan-report.png + plan-report.html: per-layer widths and the search trajectory."""
    from types import SimpleNamespace

    from prunec.passes.methods.types import SearchStats
    from prunec.runtime.plan_report import write_plan_report

    result = method if method is not None else SimpleNamespace(plan=plan, stats=SearchStats())
    write_plan_report(result, shape, tmp)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file + rename)."""
    tmp = path.with_name(f".{path.name}.prunec-tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


# ----------------------------------------------------------------------- stages


def make_plan(spec: Spec, loaded: Any, data: dict[str, Any], ctx: BuildContext) -> Any:
    """The plan (and the method's result, if a method ran); see the module docstring."""
    if spec.plan is not None:
        from prunec.compiler.manual import resolve_manual_plan
        from prunec.runtime.importance import magnitude_importance

        return resolve_manual_plan(spec.plan, loaded.shape,
                                   magnitude_importance(loaded.model, loaded.shape)), None
    if spec.static is None:
        return Plan.dense(loaded.shape), None
    result = run_method(spec, loaded, data, ctx)
    problems = result.plan.validate(loaded.shape)
    if problems:
        raise RuntimeError(f"method {spec.static.method.value} produced an invalid plan: "
                           + "; ".join(problems))
    return result.plan, result


def run_method(spec: Spec, loaded: Any, data: dict[str, Any], ctx: BuildContext) -> Any:
    """Run ``prunec.passes.methods.compute_plan`` (or apply ``--lock``)."""
    import importlib

    assert spec.static is not None
    try:
        methods: Any = importlib.import_module("prunec.passes.methods")
        lock_mod: Any = importlib.import_module("prunec.passes.methods.lock")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("prunec.passes.methods"):
            raise
        methods = lock_mod = None
    if methods is None or lock_mod is None or not hasattr(methods, "compute_plan"):
        raise CompileError((Diagnostic.error(
            "P0409", f"static method {spec.static.method.value} is not implemented yet",
            spec.static.span),))
    lock = (lock_mod.read_lock(ctx.options.lock, spec.static.span)
            if ctx.options.lock is not None else None)
    calib = data.get(spec.static.score_dataset) if spec.static.score_dataset else None
    state = resume_path(ctx.out)
    if not ctx.options.resume:
        state.unlink(missing_ok=True)  # a fresh search; --resume keeps the last state
    options = methods.MethodOptions(progress=method_progress(ctx.progress), lock=lock,
                                    spec_hash=lock_mod.spec_hash(spec),
                                    batch_size=ctx.options.batch_size,
                                    resume_path=None if lock is not None else str(state))
    return methods.compute_plan(spec.static, loaded.model, loaded.shape, calib, options)


def method_progress(progress: Any) -> Any:
    """A ``MethodOptions.progress`` callback drawing each task on our rich Progress."""
    tasks: dict[str, Any] = {}

    def update(event: Any) -> None:
        if event.task not in tasks:
            tasks[event.task] = progress.add_task(event.task, total=event.total)
        label = event.task if event.score is None else f"{event.task} (ppl {event.score:.3f})"
        progress.update(tasks[event.task], completed=event.done, total=event.total,
                        description=label)

    return update


def method_json(result: Any) -> dict[str, Any]:
    if result is None:
        return {}
    stats = _jsonable(result.stats)
    return {"from_lock": bool(result.from_lock), "stats": stats,
            "biased_layers": sorted(int(k) for k in result.biases)}


def needed_datasets(spec: Spec) -> tuple[str, ...]:
    names = list(spec.eval_datasets())
    extra = [spec.static.score_dataset if spec.static else None, history_dataset(spec)]
    names += [n for n in extra if n and n not in names]
    return tuple(names)


def load_data(spec: Spec, spec_dir: Path, tokenizer: Any) -> dict[str, Any]:
    from prunec.runtime.data import load_dataset

    return {n: load_dataset(spec.dataset(n), spec_dir, tokenizer) for n in needed_datasets(spec)}


def evaluate_all(names: tuple[str, ...], data: dict[str, Any], logits_fn: Any,
                 ctx: BuildContext, which: str, reset: Any = None) -> dict[str, Any]:
    """Perplexity per dataset; ``reset()`` (if given) runs before each dataset."""
    from prunec.runtime.evaluate import perplexity

    results = {}
    for n in names:
        if reset is not None:
            reset()
        results[n] = perplexity(logits_fn, data[n], ctx.options.batch_size, ctx.progress,
                                f"{which} perplexity on {n}")
    return results


def onnx_counts(path: Path) -> tuple[int, int]:
    """(float initializer params, those of rank 2) of an ONNX file (weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
              onnx.TensorProto.DOUBLE}
    total = matrices = 0
    for init in model.graph.initializer:
        if init.data_type not in floats:
            continue
        n = 1
        for d in init.dims:
            n *= d
        total += n
        matrices += n if len(init.dims) == 2 else 0
    return total, matrices


# ------------------------------------------------------------------------ driver


@dataclass
class BuildContext:
    spec: Spec
    spec_dir: Path
    options: BuildOptions
    progress: Any
    compile_fn: CompileFn
    out: Path
    timings: Timings = field(default_factory=Timings)

    @contextmanager
    def busy(self, label: str) -> Iterator[None]:
        """An indeterminate progress line for a stage that reports no progress itself."""
        task = self.progress.add_task(label, total=None)
        try:
            yield
        finally:
            self.progress.remove_task(task)


def build(spec: Spec, spec_dir: Path, options: BuildOptions = BuildOptions(),
          compile_fn: CompileFn = graph_compile) -> BuildResult:
    """Build ``spec``'s artifact; CompileError for user errors (nothing is written then)."""
    from prunec.runtime.evaluate import make_progress

    problems = unsupported(spec)
    if problems:
        raise CompileError(tuple(problems))
    out = output_dir(spec, spec_dir, options.output).absolute()
    if not replaceable(out):
        raise CompileError((Diagnostic.error(
            "P0406", f"output directory {out} exists and is not a prunec artifact; "
            "refusing to replace it", Span.unknown(spec.file), "choose another -o DIR"),))
    with make_progress(options.quiet) as progress:
        ctx = BuildContext(spec, spec_dir, options, progress, compile_fn, out)
        start = time.perf_counter()
        return _run(ctx, out, start)


def _run(ctx: BuildContext, out: Path, start: float) -> BuildResult:
    from prunec.runtime.evaluate import torch_logits
    from prunec.runtime.models import load_model

    spec, t = ctx.spec, ctx.timings
    with t.stage("load_model"), ctx.busy("loading the model"):
        loaded = load_model(spec.model, ctx.spec_dir)
    with t.stage("load_data"):
        data = load_data(spec, ctx.spec_dir, loaded.tokenizer)
    with t.stage("plan"):
        plan, method = make_plan(spec, loaded, data, ctx)
    with t.stage("evaluate_dense"):
        dense = evaluate_all(spec.eval_datasets(), data, torch_logits(loaded.model), ctx, "dense")
    artifact = ArtifactDir(out)
    with artifact as tmp:
        checkpoint("artifact-open")
        report = _compile_and_check(ctx, loaded, plan, data, dense, tmp, method_biases(method))
        report = dataclasses.replace(report, method_info=method_json(method),
                                     notes=report.notes + bias_notes(spec, method))
        with t.stage("write"):
            loaded.tokenizer.save_pretrained(str(tmp))
            write_json(tmp / "plan.json", plan.to_json())
            if method is not None:
                from prunec.passes.methods.lock import write_lock

                write_lock(tmp / "plan.lock.json", method)
            write_plan_pictures(method, plan, loaded.shape, tmp)
            write_hf_exports(spec, loaded, plan, tmp)
        t.stages["total"] = time.perf_counter() - start
        data_json = dataclasses.replace(report, timings=dict(t.stages)).to_json()
        write_json(tmp / "report.json", data_json)
        checkpoint("report-written")
        if not data_json["passed"]:
            failed = failed_report_path(out)
            write_json(failed, {**data_json, "plan": plan.to_json()})
            return BuildResult(data_json, None, failed)
        artifact.commit()
    failed_report_path(out).unlink(missing_ok=True)
    resume_path(out).unlink(missing_ok=True)
    return BuildResult(data_json, out, None)


@contextmanager
def quiet_torch() -> Iterator[None]:
    """Silence the exporter's chatter (torchvision notices, deprecation warnings) for users;
    errors still raise."""
    import logging
    import warnings

    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)


def artifact_runner(onnx_path: Path, providers: tuple[Provider, ...]) -> tuple[Any, Any, Any]:
    """(OrtSession, logits_fn, reset_fn) for an artifact's ONNX file. A gated one (with a
    ``.gating.json`` manifest next to it) carries H across batches; ``reset_fn`` restores the
    shipped initial H (None for a static artifact)."""
    from prunec.runtime.evaluate import onnx_logits
    from prunec.runtime.session import (
        OrtSession,
        available_providers,
        choose_providers,
        open_session,
    )

    if not onnx_path.with_suffix(".gating.json").is_file():
        session = open_session(onnx_path, providers)
        return session, onnx_logits(session.session), None
    import torch

    from prunec.runtime.gated import GatedSession

    requested = tuple(p.ort_name for p in providers)
    chosen, notes = choose_providers(requested, available_providers())
    runner = GatedSession(onnx_path, providers=list(chosen))

    def run(batch: Any) -> Any:
        return torch.from_numpy(runner.run(batch.numpy()))

    used = tuple(runner.session.get_providers())
    return OrtSession(runner.session, requested, used, notes), run, runner.reset


def _compile_and_check(ctx: BuildContext, loaded: Any, plan: Plan, data: dict[str, Any],
                       dense: dict[str, Any], tmp: Path, biases: Any = None) -> BuildReport:
    from prunec.compiler.plan import param_count

    spec, t, export = ctx.spec, ctx.timings, onnx_settings(ctx.spec)
    onnx_path = tmp / export.file
    job = CompileJob(loaded.model, plan, loaded.shape, onnx_path, export.opset,
                     spec.model.span, spec.probe, data.get(history_dataset(spec) or ""),
                     max((int(v.shape[1]) for v in data.values()), default=0), biases,
                     export.fuse)
    with t.stage("compile"), ctx.busy("compiling: graph passes, ONNX export"), quiet_torch():
        compiled = (gated_compile if gated(spec) else ctx.compile_fn)(job)
    with t.stage("evaluate_pruned"):
        session, logits_fn, reset = artifact_runner(onnx_path, export.providers)
        pruned = evaluate_all(spec.eval_datasets(), data, logits_fn, ctx, "pruned", reset)
    results = {n: DatasetResult(n, int(data[n].shape[0]), int(data[n].shape[1]), dense[n],
                                pruned[n]) for n in spec.eval_datasets()}
    seq_lens = [int(data[n].shape[1]) for n in spec.eval_datasets()]
    return BuildReport(
        spec={"name": spec.name, "file": spec.file},
        model={"source": spec.model.source.value, "location": spec.model.location,
               "dtype": spec.model.dtype.value, "source_hash": loaded.source_hash,
               "shape": dataclasses.asdict(loaded.shape)},
        shape=loaded.shape, plan=plan,
        flops_seq_len=max(seq_lens, default=DEFAULT_EXPORT_SEQ_LEN),
        onnx_counts=onnx_counts(onnx_path), perplexity=tuple(results.values()),
        gates=check_gates(spec.gates, param_count(loaded.shape, plan), results),
        providers={"requested": list(session.requested), "used": list(session.used),
                   "notes": list(session.notes)},
        timings={}, compile_info=compiled)
