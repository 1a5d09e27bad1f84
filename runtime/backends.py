"""The compile backends of ``prunec build``: a plan and a loaded model -> an ONNX file.

``BACKENDS`` is the one table the build looks its backend up in: ``"static"`` is
``graph_compile`` (torch.fx passes of ``prunec.passes.pipeline``, then
``runtime.export.export_onnx``); ``"gated"`` is ``gated_compile`` (the static plan applied to
the module with ``passes.reference``, H calibrated on the history dataset, then
``runtime.gated.export_gated_onnx``, which verifies the graph with ``check_static_gating``).
The build uses ``"gated"`` exactly when the spec's ``export onnx`` has ``gating`` on. Both
trace a float32 model on the CPU (``for_tracing``: the model itself on a CPU float32 build,
else a copy), so the file does not depend on the build's device; the static backend leaves
the onnxruntime load check to the build's evaluate_pruned stage (one session, not two). Tests
swap a backend by passing ``build(..., backends={"static": fn})`` or by replacing an entry
of ``BACKENDS``. A backend must not modify ``CompileJob.model`` and returns JSON data for
``report.json``'s ``compile``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.runtime.jsonio import jsonable


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
    max_len: int = 0  # longest sequence the gated graph supports (``export onnx`` max_len)
    refit: Any = None  # {layer: LayerRefit}: the reconstruction (``reconstruct``), or None
    fuse: bool = False  # onnxruntime fused kernels in the static graph (``export.fuse``)
    kv_cache: bool = False  # static graph with KV-cache inputs/outputs (``export.kv_cache``)
    dtype: str = "float32"  # static graph's weights and cache (``export.dtype``)


CompileFn = Callable[[CompileJob], dict[str, Any]]


def graph_compile(job: CompileJob) -> dict[str, Any]:
    """The static backend: torch.fx passes (``prunec.passes.pipeline``) then ONNX export."""
    from prunec.passes.cache_io import cache_layout
    from prunec.passes.capture import CACHE_CAPTURE, DEFAULT_CAPTURE
    from prunec.passes.pipeline import prune_graph
    from prunec.runtime.export import ExportConfig, export_onnx, write_kv_manifest

    base = for_tracing(job.model)
    refitted = with_refit(job, base, copied=base is not job.model)
    model = in_dtype(refitted, job.dtype, copied=refitted is not job.model)
    capture = CACHE_CAPTURE if job.kv_cache else DEFAULT_CAPTURE
    graph, pass_report = prune_graph(model, job.plan, job.shape, job.span, capture)
    cache = cache_layout(job.plan, job.shape) if job.kv_cache else None
    config = ExportConfig(opset=job.opset, fuse=job.fuse, cache=cache,
                          check_onnxruntime=False)  # the build's evaluate_pruned loads it
    info = export_onnx(graph, job.path, config=config)
    if cache is not None:
        write_kv_manifest(job.path, cache, model)
    export = {k: v for k, v in jsonable(info).items() if k != "path"}
    return {"passes": jsonable(pass_report), "export": export}


def for_tracing(model: Any) -> Any:
    """``model`` as the exporter traces it: float32 on the CPU (itself when it is; else a
    copy), so the ONNX file does not depend on the build's device or dtype."""
    import torch

    weight = next(model.parameters())
    if weight.device.type == "cpu" and weight.dtype == torch.float32:
        return model
    return copy.deepcopy(model).to(device="cpu", dtype=torch.float32)


def in_dtype(model: Any, dtype: str, copied: bool = False) -> Any:
    """``model`` with weights in ``dtype`` (a copy unless ``copied``; itself for float32)."""
    if dtype == "float32":
        return model
    import torch

    return (model if copied else copy.deepcopy(model)).to(getattr(torch, dtype))


def gated_compile(job: CompileJob) -> dict[str, Any]:
    """Probe gating: the static plan applied to the module (``passes.reference``), H
    calibrated on the history dataset, then ``runtime.gated.export_gated_onnx``."""
    from prunec.passes.probe import calibrate_history
    from prunec.passes.reference import apply_plan_
    from prunec.runtime.gated import export_gated_onnx

    model = job.model
    if job.plan != Plan.dense(job.shape, job.plan.method):
        model = apply_plan_(copy.deepcopy(job.model), job.plan, job.shape)
    model = with_refit(job, model, copied=model is not job.model)
    history = calibrate_history(model, job.shape, job.probe, job.history_data, job.max_len)
    info = export_gated_onnx(for_tracing(model), job.shape, job.probe, history, job.path,
                             opset=job.opset)
    return {"gated": {k: v for k, v in jsonable(info).items() if not k.endswith("_path")}}


def with_refit(job: CompileJob, model: Any = None, copied: bool = False) -> Any:
    """``model`` (default ``job.model``) with the job's reconstruction applied (a copy
    unless ``copied``): biases on o_proj / down_proj's output side, refit weights in their
    kept columns, so the width passes keep exactly them (``passes.reference.apply_refit_``)."""
    model = job.model if model is None else model
    if not job.refit:
        return model
    from prunec.passes.reference import apply_refit_

    return apply_refit_(model if copied else copy.deepcopy(model), job.refit, job.plan,
                        job.shape)


BACKENDS: dict[str, CompileFn] = {"static": graph_compile, "gated": gated_compile}


def backend_for(gating: bool, overrides: dict[str, CompileFn] | None = None) -> CompileFn:
    """The backend of an ``export onnx`` (``overrides`` first, then ``BACKENDS``)."""
    key = "gated" if gating else "static"
    return {**BACKENDS, **(overrides or {})}[key]


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
