"""ONNX export of a (pruned) captured causal LM: ``input_ids`` -> ``logits``.

Contract of the written file:
- one input ``input_ids`` int64 [batch, seq] and one output ``logits`` float32
  [batch, seq, vocab]; batch and seq are symbolic (the exported program's torch.export
  Dims become ONNX dim_params), so one file serves every batch size and length;
- weights are embedded (one self-contained .onnx) when they fit in protobuf's 2 GB limit;
  otherwise they go to ``<name>.onnx.data`` next to it and ``ExportInfo.external_data`` says
  so. SmolLM2-135M is ~540 MB in float32, so it is embedded;
- tied embeddings stay one initializer: the exported program has one tensor for
  ``embed_tokens`` and ``lm_head`` and the exporter reads it twice (Gather, and MatMul
  after a Transpose that onnxruntime folds at session creation, in memory only).

How: ``torch.onnx.export`` (the dynamo exporter, onnxscript underneath) on the exported
program from ``passes.pipeline.prune_graph`` (a GraphModule is re-exported first), then
cheap onnx-ir cleanups (unused nodes, common subexpressions, identities: ~1 s on SmolLM2),
optionally onnxruntime fusions, then ``onnx.checker`` on the saved file and an onnxruntime
CPU session as a load check.
The full onnxscript optimizer (constant folding) is not run: on SmolLM2 it took ~55 s and
made no measurable difference to onnxruntime latency (0.68 s vs 0.74 s at 1x256 on the
2-core dev box), because onnxruntime folds constants itself when a session is created.

Fusions (``ExportConfig.fuse``; the spec's ``fuse = on``, the default for static graphs):
``onnxscript.rewriter.ort_fusions.optimize_for_ort`` rewrites decomposed patterns into
onnxruntime's fused kernels: RMSNorm -> SimplifiedLayerNormalization, residual add + RMSNorm
-> SkipSimplifiedLayerNormalization, scaled dot-product attention -> MultiHeadAttention (per
layer, whatever head count the plan left; rotary stays decomposed). The file then needs
onnxruntime (its CPU and CUDA providers have these kernels); ``fuse = off`` keeps standard
ONNX. ``onnx.checker`` does not know these ops, so a fused file is checked by onnxruntime
loading it. On SmolLM2 fusion takes ~14 s and removes ~1,000 of ~2,600 nodes; the work it
removes does not shrink with pruning, so fused graphs get closer to the FLOPs bound
(``bench/static_latency.py``). Logits agree with the unfused graph within ~2e-5 relative.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from onnx_ir.passes import common
from torch.export import ExportedProgram
from torch.fx import GraphModule

from prunec.passes.capture import DEFAULT_CAPTURE, example_input, reexport

PROTOBUF_LIMIT = 2 * 1024**3 - 64 * 1024**2  # keep a margin under 2 GiB for the graph itself


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    optimize: bool = True
    check_onnxruntime: bool = True
    fuse: bool = False  # onnxruntime contrib-op fusions (see the module docstring)


@dataclass(frozen=True)
class ExportInfo:
    path: Path
    bytes: int  # .onnx plus external data, if any
    external_data: bool
    opset: int
    nodes: int
    initializers: int
    parameters: int  # elements over all initializers
    seconds: float
    fusions: dict[str, int] = field(default_factory=dict)  # kind -> count, only those applied


def _program(pruned: ExportedProgram | GraphModule) -> ExportedProgram:
    return pruned if isinstance(pruned, ExportedProgram) else reexport(pruned)


def _weight_bytes(ep: ExportedProgram) -> int:
    return sum(t.numel() * t.element_size() for t in ep.state_dict.values())


def to_onnx_program(ep: ExportedProgram, config: ExportConfig) -> torch.onnx.ONNXProgram:
    """Translate with the dynamo exporter; clean up with onnx-ir passes if asked."""
    program = torch.onnx.export(
        ep, (example_input(DEFAULT_CAPTURE),), dynamo=True, opset_version=config.opset,
        input_names=["input_ids"], output_names=["logits"], optimize=False, verbose=False,
    )
    assert program is not None
    if config.optimize:
        cleanup(program.model)
    return program


def fuse_for_onnxruntime(model: ir.Model) -> dict[str, int]:
    """Rewrite ``model`` in place with onnxruntime's fused kernels; the applied counts."""
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    _, counts = optimize_for_ort(model)
    return {kind: n for kind, n in counts.items() if n}


def cleanup(model: ir.Model) -> None:
    """Remove unused nodes, merge common subexpressions, drop Identity nodes (in place)."""
    passes = (common.RemoveUnusedNodesPass(), common.CommonSubexpressionEliminationPass(),
              common.IdentityEliminationPass(), common.RemoveUnusedNodesPass())
    for cleanup_pass in passes:
        cleanup_pass(model)


def export_onnx(pruned: ExportedProgram | GraphModule, path: Path, opset: int = 18,
                config: ExportConfig | None = None) -> ExportInfo:
    """Write ``pruned`` to ``path`` as ONNX; check it; return what was written."""
    start = time.perf_counter()
    config = config or ExportConfig(opset=opset)
    ep = _program(pruned)
    external = _weight_bytes(ep) >= PROTOBUF_LIMIT
    path.parent.mkdir(parents=True, exist_ok=True)
    program = to_onnx_program(ep, config)
    fusions = fuse_for_onnxruntime(program.model) if config.fuse else {}
    program.save(str(path), external_data=external)
    if not fusions:  # onnx.checker knows no com.microsoft op (nor SimplifiedLayerNormalization,
        onnx.checker.check_model(str(path))  # which onnxruntime registers in the default domain)
    if config.check_onnxruntime or fusions:
        check_loads(path)
    return _info(program.model, path, external, time.perf_counter() - start, fusions)


def check_loads(path: Path) -> None:
    """Open ``path`` in onnxruntime (CPU); raises if the runtime rejects the graph."""
    import onnxruntime as ort

    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _info(model: ir.Model, path: Path, external: bool, seconds: float,
          fusions: dict[str, int]) -> ExportInfo:
    """Sizes and counts of the written model (read from the in-memory IR, not the file)."""
    data = path.with_name(path.name + ".data")
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    inits = model.graph.initializers.values()
    elements = sum(v.const_value.size for v in inits if v.const_value is not None)
    opset = model.opset_imports.get("", 0)
    return ExportInfo(path, size, external, opset, len(list(model.graph)), len(inits),
                      elements, seconds, fusions)
