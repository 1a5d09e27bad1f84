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
``report.json``'s ``compile``, unless the model comes as a ``Handoff`` (the build, when nothing
after the compile reads it): then the backend owns it (``take_model``) and changes it in place
instead of copying it, and the static backend drops it once the graph is captured and pruned,
copying only the weights the pruned graph still shares with it (``own_weights``): a model
loaded from safetensors is a file mapping that stays resident while any of its tensors lives,
so the survivors go to fresh memory and the whole mapping goes (SmolLM2: its 513 MiB out of
the compile's peak, ~140 MiB of unchanged weights copied).
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunec.compiler.diagnostics import Span
from prunec.compiler.ir import ModelShape
from prunec.compiler.plan import Plan
from prunec.runtime.jsonio import jsonable


class Handoff:
    """The loaded model given to a backend with no other reference kept: ``take()`` returns
    it once and forgets it, so the backend can drop it when it no longer needs it."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def take(self) -> Any:
        model, self._model = self._model, None
        if model is None:
            raise RuntimeError("the handed-off model was already taken")
        return model


@dataclass(frozen=True)
class CompileJob:
    """What the compiler backend turns into ``path`` (an ONNX file)."""

    model: Any  # the loaded (dense) nn.Module, not to be modified, or a Handoff of it
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

    dense, owned = take_model(job)
    shared = storages(dense) if owned else set()
    model = traced_model(job, dense, owned)
    del dense
    cache = cache_layout(job.plan, job.shape) if job.kv_cache else None
    if cache is not None:
        write_kv_manifest(job.path, cache, model)
    traced = Handoff(model)  # from here prune_graph alone holds it
    del model
    capture = CACHE_CAPTURE if job.kv_cache else DEFAULT_CAPTURE
    release = functools.partial(own_weights, shared=shared) if owned else None
    graph, pass_report = prune_graph(traced.take(), job.plan, job.shape, job.span, capture,
                                     release)
    config = ExportConfig(opset=job.opset, fuse=job.fuse, cache=cache,
                          check_onnxruntime=False)  # the build's evaluate_pruned loads it
    info = export_onnx(graph, job.path, config=config)
    export = {k: v for k, v in jsonable(info).items() if k != "path"}
    return {"passes": jsonable(pass_report), "export": export}


def take_model(job: CompileJob) -> tuple[Any, bool]:
    """The job's model and whether the backend owns it (it came as a ``Handoff``)."""
    if isinstance(job.model, Handoff):
        return job.model.take(), True
    return job.model, False


def traced_model(job: CompileJob, dense: Any, owned: bool) -> Any:
    """What the static backend traces: ``dense`` float32 on the CPU, refit, in the export
    dtype; changed in place when owned or once copied, else copied first."""
    base = for_tracing(dense, owned)
    refitted = with_refit(job, base, copied=owned or base is not dense)
    return in_dtype(refitted, job.dtype, copied=owned or refitted is not dense)


def storages(model: Any) -> set[int]:
    """The data pointers of ``model``'s parameter and buffer storages."""
    tensors = [*model.parameters(), *model.buffers()]
    return {t.untyped_storage().data_ptr() for t in tensors}


def own_weights(module: Any, shared: set[int]) -> None:
    """Copy the parameters and buffers of ``module`` (the pruned graph) whose storage is in
    ``shared`` (the dense model's: unchanged by the plan) into fresh memory, in place; a
    tensor read twice (tied embeddings) stays one tensor."""
    copies: dict[int, Any] = {}
    for sub in module.modules():
        for table in (sub._parameters, sub._buffers):
            for name, tensor in table.items():
                if tensor is not None and tensor.untyped_storage().data_ptr() in shared:
                    table[name] = copies.setdefault(id(tensor), _copy(tensor))


def _copy(tensor: Any) -> Any:
    """A copy of ``tensor`` in fresh memory (a Parameter stays one)."""
    import torch

    copied = tensor.detach().clone()
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(copied, requires_grad=tensor.requires_grad)
    return copied


def for_tracing(model: Any, owned: bool = False) -> Any:
    """``model`` as the exporter traces it: float32 on the CPU (itself when it is, or when
    ``owned``: moved in place; else a copy), so the ONNX file does not depend on the build's
    device or dtype."""
    import torch

    weight = next(model.parameters())
    if weight.device.type == "cpu" and weight.dtype == torch.float32:
        return model
    return (model if owned else copy.deepcopy(model)).to(device="cpu", dtype=torch.float32)


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

    dense, owned = take_model(job)
    model = dense
    if job.plan != Plan.dense(job.shape, job.plan.method):
        model = apply_plan_(dense if owned else copy.deepcopy(dense), job.plan, job.shape)
    mine = owned or model is not dense  # changed in place from here on
    model = with_refit(job, model, copied=mine)
    del dense
    history = calibrate_history(model, job.shape, job.probe, job.history_data, job.max_len)
    info = export_gated_onnx(for_tracing(model, mine), job.shape, job.probe, history,
                             job.path, opset=job.opset, fuse=job.fuse)
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
